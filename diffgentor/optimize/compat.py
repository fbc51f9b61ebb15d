"""The compatibility matrix, as data: which optimizer serves which pipeline family, and which pairs conflict.

Checked at plan time, before any weights load, and printed by the dry run and `diffgentor support`.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffgentor.families import ALL_FAMILIES


@dataclass(frozen=True)
class Support:
    families: frozenset[str]
    #: Why the other families are refused; shown in the error next to the families that do fit.
    reason: str = ""


#: optimizer name -> the families it is known to take effect on.
FAMILY_SUPPORT: dict[str, Support] = {
    "tf32": Support(ALL_FAMILIES),
}


@dataclass(frozen=True)
class Conflict:
    """Two optimizer tags that cannot be combined ("error") or only with care ("warn")."""

    first: str
    second: str
    severity: str  # "error" | "warn"
    reason: str


#: Pairs from the seed's compatibility matrix (plus what diffusers taught us). Tags come from
#: Optimizer.tags(): an optimizer's name, plus e.g. "attention:flash" for a specific backend.
CONFLICTS: tuple[Conflict, ...] = ()


def families_supporting(name: str) -> frozenset[str]:
    """The families `name` serves; an optimizer missing from the table serves none (never silently all)."""
    support = FAMILY_SUPPORT.get(name)
    return support.families if support else frozenset()
