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
