"""The compatibility matrix, derived from the optimizers' declarations: which optimizer serves which pipeline
family (and why not the others), and which pairs conflict.

Checked at plan time, before any weights load, and printed by the dry run and `diffgentor support`. Nothing
is written here: each optimizer declares its own `families`, `refused_because` and `conflicts` (base.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffgentor.optimize.base import Conflict


@dataclass(frozen=True)
class Support:
    families: frozenset[str]
    #: Why the other families are refused; shown in the error next to the families that do fit.
    reason: str = ""


def family_support() -> dict[str, Support]:
    """optimizer name -> the families it is known to take effect on, and why not the others."""
    from diffgentor.optimize.registry import load_all

    return {name: Support(frozenset(cls.families), cls.refused_because) for name, cls in load_all().items()}


def conflicts() -> tuple[Conflict, ...]:
    """Every declared conflicting pair, once (optimizers that share a base share its declarations)."""
    from diffgentor.optimize.registry import load_all

    found: dict[Conflict, None] = {}
    for cls in load_all().values():
        found.update(dict.fromkeys(cls.conflicts))
    return tuple(found)


def families_supporting(name: str) -> frozenset[str]:
    """The families `name` serves; an optimizer not registered serves none (never silently all)."""
    support = family_support().get(name)
    return support.families if support else frozenset()


__all__ = ["Conflict", "Support", "conflicts", "families_supporting", "family_support"]
