"""torch's CPU thread count as a run setting.

torch starts one intra-op thread per core (or OMP_NUM_THREADS). On a shared machine that oversubscribes the
cores: a 256x256 matmul on a loaded 2-core machine ran ~8x slower at 2 threads than at 1. `threads=N` pins it
for the run; null keeps what torch chose at start-up, which honours OMP_NUM_THREADS. The previous count is
restored afterwards, so one job of a multirun never leaks its setting into the next.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional


def thread_source(requested: Optional[int]) -> str:
    """Where the run's thread count comes from, as run.json records it."""
    if requested is not None:
        return "threads setting"
    if os.environ.get("OMP_NUM_THREADS"):
        return "OMP_NUM_THREADS"
    return "torch default (one per core)"


@contextlib.contextmanager
def torch_threads(requested: Optional[int]) -> Iterator[dict]:
    """Run with `requested` intra-op threads (None: leave torch's count); yields what run.json records."""
    import torch

    before = torch.get_num_threads()
    if requested is not None:
        torch.set_num_threads(requested)
    try:
        yield {"requested": requested, "used": torch.get_num_threads(), "source": thread_source(requested)}
    finally:
        torch.set_num_threads(before)
