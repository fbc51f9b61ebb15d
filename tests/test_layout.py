"""The package's shape: private diffusers / Hydra names are touched in diffgentor/internals.py only."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diffgentor"
#: Private diffusers attributes reached through an object rather than imported (internals.py wraps each).
PRIVATE_ATTRIBUTES = re.compile(r"\.(_diffusers_hook|_hook_order|_active_backend|_backends|_execution_device|"
                                r"_repeated_blocks|_pack_latents|_prepare_latent_image_ids|"
                                r"_perform_calibration_step)\b")


def _private_imports(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("diffusers", "hydra"):
            names = [node.module, *(alias.name for alias in node.names)]
            found += [f"from {node.module} import {alias.name}" for alias in node.names
                      if any(part.startswith("_") for name in names for part in name.split("."))]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "._internal." in node.value:
            found.append(node.value)
    return found


def test_private_library_names_are_touched_in_internals_only():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "internals.py":
            continue
        text = path.read_text(encoding="utf-8")
        found = _private_imports(ast.parse(text)) + PRIVATE_ATTRIBUTES.findall(text)
        if found:
            offenders[str(path.relative_to(PACKAGE))] = found
    assert offenders == {}
    # and internals.py does touch them (so the check above looks for what exists)
    internals = (PACKAGE / "internals.py").read_text(encoding="utf-8")
    assert _private_imports(ast.parse(internals)) and PRIVATE_ATTRIBUTES.findall(internals)


def test_each_declared_variable_has_its_default_in_one_place():
    """conf/ reads DG_* variables as ${dg.env:NAME}: the default is the optimizer's Settings default, never
    written again in a YAML file."""
    from diffgentor.envvars import declared_variables

    conf = PACKAGE.parent / "conf"
    written = {m.group(1) for path in conf.rglob("*.yaml")
               for m in re.finditer(r"\$\{dg\.env:(DG_\w+),", path.read_text(encoding="utf-8"))}
    read = {m.group(1) for path in conf.rglob("*.yaml")
            for m in re.finditer(r"\$\{dg\.env:(DG_\w+)\}", path.read_text(encoding="utf-8"))}
    assert written & set(declared_variables()) == set()
    assert read == set(declared_variables())


def test_the_readme_lists_every_variable_with_its_declared_default():
    from diffgentor.envvars import declared_variables, documented_variables

    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(DG_\w+)` \| ([^|]+) \|", readme, re.M))
    assert set(rows) == set(declared_variables())
    for name, text in documented_variables().items():
        assert text.endswith(f"(default {rows[name].strip()})"), (name, rows[name])
