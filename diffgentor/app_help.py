"""`python -m diffgentor --help`, composed once instead of once per config group.

Hydra's app help lists every config group (its own and the app's) for `$APP_CONFIG_GROUPS` and
`$HYDRA_CONFIG_GROUPS` even when the template uses neither, and each listing deep-copies the whole config
repository, structured schemas included: ~130 copies, about 2 s of a 2.7 s `--help` here (hydra-core 1.3.8;
its issues #1543 and #2907). diffgentor's template (conf/config.yaml `hydra.help`) lists conf/'s groups itself
(`${dg.option_groups:}`) and needs only `$CONFIG`, so the same text comes from one composition through Hydra's
public compose API. Anything else (Hydra's own flags next to --help, a template using the other
placeholders) is left to Hydra, unchanged. tests/test_startup.py checks both give the same text.
"""

from __future__ import annotations

import os
import string
import sys
from typing import Sequence

HELP_FLAGS = ("--help", "-h")
#: What only Hydra's own help can fill in; a template naming one goes to Hydra.
HYDRA_PLACEHOLDERS = ("FLAGS_HELP", "HYDRA_CONFIG_GROUPS", "APP_CONFIG_GROUPS")


def print_app_help(argv: Sequence[str]) -> bool:
    """Print the app help for `argv` (overrides and --help) and return True; False leaves it to Hydra. An
    override that does not compose ends the process as Hydra ends a run with one (Hydra's own --help would
    show a traceback)."""
    if not any(arg in HELP_FLAGS for arg in argv):
        return False
    overrides = [arg for arg in argv if arg not in HELP_FLAGS]
    if any(arg.startswith("-") for arg in overrides):  # --config-dir, --resolve, -m, ...: Hydra's flags
        return False
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from diffgentor.config import CONFIG_DIR

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="diffgentor"):
            cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            return False
        print(f"{exc}\n\nSet the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.",
              file=sys.stderr)
        sys.exit(1)
    template = string.Template(cfg.hydra.help.template)
    if set(HYDRA_PLACEHOLDERS) & set(template.get_identifiers()):
        return False
    with open_dict(cfg):
        del cfg["hydra"]
    print(template.substitute(CONFIG=OmegaConf.to_yaml(cfg, resolve=False)))
    return True
