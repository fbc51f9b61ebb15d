"""Optimizers: plan before load (plan.py), apply in a fixed order (registry.STAGE_ORDER), prove with evidence.

`apply_optimizations(pipe, run_cfg)` is the one public applier for code that holds a loaded pipeline
(tests, benchmarks): it plans for the pipeline's family, refuses what the plan refuses, applies the rest and
returns a handle that collects the evidence after generation and can undo what is undoable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class AppliedOptimizations:
    """What `apply_optimizations` did to one pipeline."""

    plan: Any
    records: list

    def evidence_pass(self, pipe: Any) -> Any:
        """Context manager: the generations inside are measured, not timed (see plan.evidence_pass)."""
        from diffgentor.optimize.plan import evidence_pass

        return evidence_pass(self.plan, pipe)

    def evidence(self, pipe: Any) -> list[dict]:
        """Measure every optimizer's evidence (after generation); the run.json `optimizations` entries."""
        from diffgentor.optimize.plan import collect_evidence

        collect_evidence(self.plan, pipe, self.records)
        return [record.to_json() for record in self.records]

    def remove(self, pipe: Any) -> None:
        """Undo in reverse order; an optimizer that cannot be undone raises NotImplementedError."""
        for step in reversed(self.plan.steps):
            step.optimizer.remove(pipe)


def apply_optimizations(pipe: Any, run_cfg: Any, family: Optional[str] = None) -> AppliedOptimizations:
    """Plan (for `family`, default: the pipeline's own) and apply what `run_cfg` asks for, on `pipe` in place.

    `run_cfg` is a RunConfig or the composed DictConfig. Raises UnsupportedError on the first refusal.
    """
    from omegaconf import DictConfig

    from diffgentor.optimize.plan import apply_plan, build_plan
    from diffgentor.optimize.targets import family_of

    if isinstance(run_cfg, DictConfig):
        from diffgentor.run import resolve_config

        run_cfg = resolve_config(run_cfg)
    plan = build_plan(run_cfg, family or family_of(pipe))
    return AppliedOptimizations(plan, apply_plan(plan, pipe))


__all__ = ["AppliedOptimizations", "apply_optimizations"]
