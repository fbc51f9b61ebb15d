"""Optimizers: plan before load (plan.py), apply in a fixed order (registry.STAGE_ORDER), prove with evidence.

`plan.apply_plan(plan, pipe)` is the one applier; it returns AppliedOptimizations, which collects the evidence
after generation, can undo what is undoable and, used as a context manager, releases process-wide state on
exit. `apply_optimizations(pipe, run_cfg)` plans for a loaded pipeline and applies (tests, benchmarks).
"""

from __future__ import annotations

from typing import Any, Optional

from diffgentor.optimize.plan import AppliedOptimizations


def apply_optimizations(pipe: Any, run_cfg: Any, family: Optional[str] = None) -> AppliedOptimizations:
    """Plan (for `family`, default: the pipeline's own) and apply what `run_cfg` asks for, on `pipe` in place.

    `run_cfg` is a RunConfig or the composed DictConfig. Raises RefusedError when the plan refuses a step.
    """
    from omegaconf import DictConfig

    from diffgentor.config import resolve_config
    from diffgentor.optimize.plan import apply_plan, build_plan
    from diffgentor.optimize.targets import family_of

    if isinstance(run_cfg, DictConfig):
        run_cfg = resolve_config(run_cfg)
    return apply_plan(build_plan(run_cfg, family or family_of(pipe)), pipe)


__all__ = ["AppliedOptimizations", "apply_optimizations"]
