"""A call counter that keeps counting inside torch.compile'd code without causing recompiles.

Measured (torch 2.13): a Python int counter (`self.calls += 1`) in code that dynamo traces is guarded on
its value, so the graph recompiles at every call (and falls back to eager after the recompile limit); an
`itertools.count` does the same. A CPU tensor incremented in place is a graph input guarded only on its
metadata: one graph, and every compiled call still increments it.

Under CUDA graphs (compile modes reduce-overhead / max-autotune on CUDA) a mutated non-static input would
make inductor skip the CUDA graphs, so the compile optimizer turns in-graph counting off there
(`counting_inside_compiled(False)`); eager calls still count and the evidence says so.
"""

from __future__ import annotations

import torch

_COUNT_INSIDE_COMPILED = {"enabled": True}


def counting_inside_compiled(enabled: bool) -> None:
    """Whether counters tick inside compiled graphs (read once, when dynamo traces)."""
    _COUNT_INSIDE_COMPILED["enabled"] = enabled


def counts_inside_compiled() -> bool:
    return _COUNT_INSIDE_COMPILED["enabled"]


class CallCounter:
    """`bump()` once per call; `calls` reads the total (one host read, after the run)."""

    def __init__(self):
        self._count = torch.zeros((), dtype=torch.int64)

    def bump(self, *_: object) -> None:
        if torch.compiler.is_compiling() and not _COUNT_INSIDE_COMPILED["enabled"]:
            return
        self._count.add_(1)

    @property
    def calls(self) -> int:
        return int(self._count.item())
