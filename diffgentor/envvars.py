"""The seed's DG_* environment variables, read only through the config (`${dg.env:NAME}`).

Each variable is declared by the optimizer whose setting it sets (Optimizer.env_variables), and its default
is that Settings field's default: the table `--help` prints, the defaults and the allowed values are derived
here from those declarations. The resolver parses the variable to the type of its default, so a malformed
value fails when the config is resolved, with a message naming the variable, instead of deep inside an
optimizer.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from typing import Any

from omegaconf import ListConfig, OmegaConf

from diffgentor.errors import ConfigError



@dataclass(frozen=True)
class Variable:
    """One DG_* variable as the optimizers declare it (several may share one, e.g. DG_CACHE_INTERVAL)."""

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()


@functools.lru_cache(maxsize=None)
def declared_variables() -> dict[str, Variable]:
    """Every DG_* variable the optimizers declare, by name; one shared by several optimizers must have one
    default (else the declarations contradict each other: an error)."""
    from diffgentor.optimize.registry import load_all

    found: dict[str, Variable] = {}
    for cls in load_all().values():
        for declared in cls.env_variables:
            default = cls.settings_default(declared.field)
            known = found.get(declared.name)
            if known is None:
                found[declared.name] = Variable(declared.name, default, declared.help, declared.choices)
            elif known.default != default:
                raise ConfigError(f"{declared.name}: {cls.name} declares default {default!r}, another "
                                  f"optimizer {known.default!r}")
            else:
                first, _, text = known.help.partition(": ")
                other, _, _ = declared.help.partition(": ")
                found[declared.name] = Variable(declared.name, default, f"{first} / {other}: {text}",
                                                known.choices)
    return found


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def documented_variables() -> dict[str, str]:
    """name -> what it sets and its default, as `diffgentor --help` prints them."""
    return {name: f"{v.help} (default {_shown(v.default)})" for name, v in declared_variables().items()}

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
    declared = declared_variables().get(name)
    choices = declared.choices if declared else ()
    if choices and raw.strip() not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}: set e.g. {name}={default}")
    return raw.strip()


_DECLARED = object()


def _env_resolver(name: str, default: Any = _DECLARED) -> Any:
    """`${dg.env:NAME}`: the variable, else its declared default; `${dg.env:NAME,default}` (a user's own
    config, for a variable no optimizer declares) gives the default itself."""
    if default is _DECLARED:
        variable = declared_variables().get(name)
        if variable is None:
            raise ConfigError(f"${{dg.env:{name}}}: no optimizer declares {name}, so it has no default: give "
                              f"one as ${{dg.env:{name},DEFAULT}}, or use one of {', '.join(declared_variables())}")
        default = variable.default
    elif isinstance(default, ListConfig):
        default = OmegaConf.to_container(default)
    raw = os.environ.get(name)
    if raw is None:
        return default
    return parse_env_value(name, raw, default)


def register_resolvers() -> None:
    """Make `${dg.env:NAME}` available to configs (idempotent)."""
    if not OmegaConf.has_resolver("dg.env"):
        OmegaConf.register_new_resolver("dg.env", _env_resolver)
