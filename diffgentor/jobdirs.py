"""Multirun job folders named like `003-cache=pab`: the job number, then only what this job varies.

Hydra's default folder name is every override of the job joined raw (`0_+cache=none,+experiment=
cache_methods,model=shapes-flux`): commas, plus signs and the keys every job shares. Two pieces fix that:
- before Hydra starts, `exclude_constant_overrides` adds the keys the multirun's command line holds constant
  (`model=...`, `+experiment=...`) to `hydra.job.config.override_dirname.exclude_keys`;
- the `dg.job_dir` resolver (hydra.sweep.subdir) drops the keys that do not change what a job computes,
  strips `+`/`~`, and replaces every character a shell would need quoted.
The number keeps folders unique; the rest is for people reading them.
"""

from __future__ import annotations

import re
from typing import Sequence

from omegaconf import OmegaConf

ITEM_SEP = "__"  # conf/config.yaml: hydra.job.config.override_dirname.item_sep
EXCLUDE_KEY = "hydra.job.config.override_dirname.exclude_keys"
_UNSAFE = re.compile(r"[^A-Za-z0-9._=-]+")
_MULTIRUN_FLAGS = ("-m", "--multirun")


def job_dir(num: int, override_dirname: str) -> str:
    """`003-cache=pab__cache.threshold=0.3`; just `003` for a job that varies nothing."""
    from diffgentor.resume import VOLATILE_KEYS

    parts = []
    for item in filter(None, str(override_dirname).split(ITEM_SEP)):
        item = item.lstrip("+~")
        if item.split("=", 1)[0].split(".")[0] in VOLATILE_KEYS:
            continue
        parts.append(_UNSAFE.sub("_", item).strip("_"))
    return ITEM_SEP.join([f"{int(num):03d}-{parts[0]}", *parts[1:]]) if parts else f"{int(num):03d}"


def exclude_constant_overrides(argv: Sequence[str]) -> list[str]:
    """argv with the multirun's constant override keys excluded from job folder names (unchanged when it is
    no multirun, when the user sets the exclusion list, or when Hydra would reject the overrides anyway)."""
    if not any(flag in argv for flag in _MULTIRUN_FLAGS) or any(a.startswith(EXCLUDE_KEY) for a in argv):
        return list(argv)
    from hydra.core.override_parser.overrides_parser import OverridesParser

    candidates = [a for a in argv if not a.startswith("-") and "=" in a]
    try:
        overrides = OverridesParser.create().parse_overrides(candidates)
    except Exception:  # noqa: BLE001 - a malformed override: leave it for Hydra to report in its own words
        return list(argv)
    constant = sorted({o.key_or_group for o in overrides
                       if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")})
    if not constant:
        return list(argv)
    return [*argv, f"{EXCLUDE_KEY}=[{','.join(constant)}]"]


def register_job_dir_resolver() -> None:
    """Make `${dg.job_dir:NUM,OVERRIDE_DIRNAME}` available (idempotent)."""
    if not OmegaConf.has_resolver("dg.job_dir"):
        OmegaConf.register_new_resolver("dg.job_dir", job_dir)
