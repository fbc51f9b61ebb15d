"""The seed's DG_* environment variables, read only through the config (`${dg.env:NAME,default}`).

The resolver parses the variable to the type of its default, so a malformed value fails when the config is
resolved, with a message naming the variable, instead of deep inside an optimizer.
"""

from __future__ import annotations

import os
import re
from typing import Any

from omegaconf import ListConfig, OmegaConf

from diffgentor.errors import ConfigError

#: Every variable the seed document promises, with what it sets. Printed by `diffgentor --help`.
DOCUMENTED_VARIABLES = {
    "DG_CACHE_INTERVAL": "deep_cache / taylor_seer: steps between full computations (default 3)",
    "DG_CACHE_BRANCH_ID": "deep_cache: UNet branch whose output is cached (default 0)",
    "DG_FBC_THRESHOLD": "first_block_cache: residual similarity threshold (default 0.2)",
    "DG_PAB_SPATIAL_SKIP": "pab: spatial attention block skip range (default 2)",
    "DG_PAB_TIMESTEP_SKIP": "pab: timestep range in which attention is skipped (default (100, 800))",
    "DG_COMPILE_MODE": "torch.compile mode (default max-autotune-no-cudagraphs)",
    "DG_COMPILE_FULLGRAPH": "torch.compile fullgraph (default false)",
    "DG_COMPILE_COMPONENTS": "pipeline components to compile, comma separated (default transformer)",
}

#: Variables whose value must be one of a fixed set, checked when the config resolves.
CHOICES = {
    "DG_COMPILE_MODE": ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: set {name}=true or {name}=false")


def _parse_number(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw.strip())
    except ValueError:
        example = "3" if kind is int else "0.2"
        noun = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {noun}: set e.g. {name}={example}") from None


def _parse_list(name: str, raw: str, default: list) -> list:
    items = [part for part in re.split(r"[\s,()\[\]]+", raw.strip()) if part]
    if not items:
        raise ConfigError(f"{name} is empty: set e.g. {name}={','.join(map(str, default))}")
    if default and all(isinstance(d, int) for d in default):
        parsed = [_parse_number(name, item, int) for item in items]
        if len(parsed) != len(default):
            shape = ", ".join(map(str, default))
            raise ConfigError(
                f"{name}={raw!r} needs {len(default)} integers like ({shape}), got {len(parsed)}"
            )
        return parsed
    return items


def parse_env_value(name: str, raw: str, default: Any) -> Any:
    """Parse `raw` (the variable's text) to the type of `default`; raise ConfigError naming `name`."""
    if isinstance(default, bool):
        return _parse_bool(name, raw)
    if isinstance(default, int):
        return _parse_number(name, raw, int)
    if isinstance(default, float):
        return _parse_number(name, raw, float)
    if isinstance(default, (list, tuple)):
        return _parse_list(name, raw, list(default))
    if not raw.strip():
        raise ConfigError(f"{name} is set but empty: unset it or give a value")
    if name in CHOICES and raw.strip() not in CHOICES[name]:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(CHOICES[name])}: set e.g. {name}={default}")
    return raw.strip()


def _env_resolver(name: str, default: Any = None) -> Any:
    if isinstance(default, ListConfig):
        default = OmegaConf.to_container(default)
    raw = os.environ.get(name)
    if raw is None:
        return default
    return parse_env_value(name, raw, default)


def register_resolvers() -> None:
    """Make `${dg.env:NAME,default}` available to configs (idempotent)."""
    if not OmegaConf.has_resolver("dg.env"):
        OmegaConf.register_new_resolver("dg.env", _env_resolver)
