"""Plan before load: which optimizers the config asks for, in which order, and whether each may apply.

The plan is built from the resolved config and the pipeline family alone, so every refusal (unsupported
family, conflicting pair, missing package) happens before any weights load, and a dry run can print it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator

from diffgentor.errors import DiffgentorError, RefusedError
from diffgentor.families import FAMILIES
from diffgentor.optimize.base import OptimizationRecord, Optimizer, Target
from diffgentor.optimize.compat import conflicts, families_supporting
from diffgentor.optimize.registry import STAGE_ORDER, load_all, stage_of

log = logging.getLogger(__name__)


@dataclass
class PlanStep:
    optimizer: Optimizer
    supported: bool = True
    reason: str = ""

    @property
    def name(self) -> str:
        return self.optimizer.name


@dataclass
class Plan:
    family: str
    #: What the run loads (family, device, dtype), resolved once; every optimizer is built with it.
    target: Target = field(default_factory=lambda: Target(family=""))
    steps: list[PlanStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: Refusals outside the optimizations (run values, size, prompts), added by run.prepare.
    problems: list[str] = field(default_factory=list)

    @property
    def offloads(self) -> bool:
        """Whether an offload step moves the weights itself: the loaded pipeline then stays in CPU memory
        (moving it to the accelerator first would need the very memory offloading exists to spare)."""
        return any(step.optimizer.stage == "offload" for step in self.steps)

    @property
    def splits_each_image(self) -> bool:
        """Whether every rank of a torchrun launch takes part in every image (context parallelism), instead
        of each generating its own share of the images."""
        return any(step.optimizer.stage == "parallel" for step in self.steps)

    @property
    def refused(self) -> list[PlanStep]:
        return [s for s in self.steps if not s.supported]

    def raise_if_refused(self) -> None:
        """One error naming every refusal, the run's own values first; the dry run prints them one a line.
        InvalidConfigError when only values are wrong, RefusedError when an optimization is refused."""
        from diffgentor.validate import InvalidConfigError

        steps = [f"{step.name}: {step.reason}" for step in self.refused]
        if steps:
            raise RefusedError([*self.problems, *steps])
        if self.problems:
            raise InvalidConfigError(self.problems)

    def describe(self) -> str:
        """The ordered plan as printed by the dry run."""
        lines = [f"plan for a '{self.family}' pipeline (order: {' -> '.join(STAGE_ORDER)}):"]
        if not self.steps:
            lines.append("  (no optimizations requested)")
        for i, step in enumerate(self.steps, 1):
            status = "supported" if step.supported else f"REFUSED: {step.reason}"
            lines.append(f"  {i}. {step.name} {step.optimizer.params()} -> {status}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.extend(f"  REFUSED: {problem}" for problem in self.problems)
        return "\n".join(lines)


def _family_refusal(name: str, family: str) -> str | None:
    families = families_supporting(name)
    if family in families:
        return None
    reason = load_all()[name].refused_because
    fits = ", ".join(sorted(families)) or "none"
    return f"does not apply to '{family}' pipelines ({reason}); it serves: {fits}"


def _alternatives_hint(name: str, family: str) -> str:
    """Name the optimizers of the same stage that do serve `family` (e.g. caches that fit a UNet)."""
    stage = load_all()[name].stage
    fits = sorted(other for other, cls in load_all().items()
                  if cls.stage == stage and other != name and family in families_supporting(other))
    return f"; for this pipeline use: {', '.join(fits)}" if fits else ""


def resolve_target(run_cfg: Any, family: str) -> Target:
    """The family, device and weights dtype the run will load with, known before load (resolved once: the
    plan's optimizers and the loader use this one)."""
    from diffgentor.pipeline import resolve_device, resolve_dtype

    device = resolve_device(str(getattr(run_cfg, "device", "auto")))
    precision = getattr(run_cfg, "precision", None)
    dtype_name = getattr(getattr(precision, "dtype", "auto"), "value", getattr(precision, "dtype", "auto"))
    return Target(family, device, resolve_dtype(str(dtype_name), device))


def build_plan(run_cfg: Any, family: str, target: Target | None = None) -> Plan:
    """Select, order and check the optimizers `run_cfg` asks for, for a pipeline of `family` (loaded as
    `target` says; default: resolved from `run_cfg`)."""
    if family not in FAMILIES:
        raise DiffgentorError(f"unknown pipeline family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    target = target or resolve_target(run_cfg, family)
    plan = Plan(family=family, target=target)
    for name, cls in sorted(load_all().items(), key=lambda item: (stage_of(item[0]), item[0])):
        settings = cls.select(run_cfg)
        if settings is None:
            continue
        step = PlanStep(cls(settings, target))
        refusal = _family_refusal(name, family)
        if refusal:
            step.supported, step.reason = False, refusal + _alternatives_hint(name, family)
        else:
            try:
                step.optimizer.check(family)
            except DiffgentorError as exc:  # unsupported here, or a setting out of range: listed, not raised
                step.supported, step.reason = False, str(exc)
        plan.steps.append(step)
    _check_conflicts(plan)
    return plan


def _check_conflicts(plan: Plan) -> None:
    tagged = [(step, step.optimizer.tags()) for step in plan.steps]
    for conflict in conflicts():
        firsts = [s for s, tags in tagged if conflict.first in tags]
        seconds = [s for s, tags in tagged if conflict.second in tags]
        if not firsts or not seconds:
            continue
        message = f"{conflict.first} and {conflict.second} conflict: {conflict.reason}"
        if conflict.severity == "error":
            for step in seconds:
                if step.supported:
                    step.supported, step.reason = False, message
        else:
            plan.warnings.append(message)


@dataclass
class AppliedOptimizations:
    """What apply_plan did to one pipeline: the one applier every caller uses (run, tests, benchmarks). As a
    context manager its exit releases process-wide state (`with apply_plan(plan, pipe) as applied:`)."""

    plan: Plan
    records: list[OptimizationRecord]

    def __enter__(self) -> "AppliedOptimizations":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def before_timed_calls(self, pipe: Any) -> None:
        """Between warmup and the timed calls: every optimizer takes out what measured the warmup."""
        for step in self.plan.steps:
            step.optimizer.before_timed_calls(pipe)

    def evidence_pass(self, pipe: Any) -> Any:
        """Context manager: the generations inside are measured, not timed (see evidence_pass)."""
        return evidence_pass(self.plan, pipe)

    def evidence(self, pipe: Any) -> list[dict]:
        """Measure every optimizer's evidence (after generation); the run.json `optimizations` entries."""
        collect_evidence(self.plan, pipe, self.records)
        return [record.to_json() for record in self.records]

    def remove(self, pipe: Any) -> None:
        """Undo in reverse order; an optimizer that cannot be undone raises NotImplementedError."""
        for step in reversed(self.plan.steps):
            step.optimizer.remove(pipe)

    def release(self) -> None:
        """Every optimizer undoes its process-wide side effects (idempotent; the pipeline stays as it is)."""
        release_plan(self.plan)


def apply_plan(plan: Plan, pipe: Any) -> AppliedOptimizations:
    """Apply every step in order (a step that fails releases what the others set); the records get their
    evidence after generation (AppliedOptimizations.evidence)."""
    plan.raise_if_refused()
    records = []
    try:
        for step in plan.steps:
            step.optimizer.apply(pipe)
            records.append(OptimizationRecord(name=step.name, params=step.optimizer.params(), applied=True))
    except BaseException:
        release_plan(plan)
        raise
    return AppliedOptimizations(plan, records)


def release_plan(plan: Plan) -> None:
    """After the run (ok or failed): every optimizer undoes its process-wide side effects, in reverse order."""
    for step in reversed(plan.steps):
        step.optimizer.release()


def needs_evidence_pass(plan: Plan) -> bool:
    """Whether an optimizer measures its effect by instrumenting a generation of its own (caches do)."""
    from diffgentor.optimize.base import Optimizer

    return any(type(step.optimizer).instrument is not Optimizer.instrument for step in plan.steps)


@contextlib.contextmanager
def evidence_pass(plan: Plan, pipe: Any) -> Iterator[None]:
    """The evidence pass, after the timed calls: every optimizer's instruments attached, and compiled
    modules run eager (`force_eager`: instruments traced into a graph would recompile it, and the compiled
    graphs stay as the timed calls used them). What the instruments measured stays for collect_evidence."""
    import torch

    try:
        for step in plan.steps:
            step.optimizer.instrument(pipe)
        with torch.compiler.set_stance("force_eager"):
            yield
    finally:
        for step in reversed(plan.steps):
            step.optimizer.uninstrument(pipe)


def collect_evidence(plan: Plan, pipe: Any, records: list[OptimizationRecord]) -> None:
    """Fill each record's measured evidence; an optimizer with nothing to show is an error, not a pass."""
    for step, record in zip(plan.steps, records):
        evidence = step.optimizer.evidence(pipe)
        if not evidence:
            raise DiffgentorError(f"{step.name} reported no evidence that it took effect")
        record.warnings.extend(evidence.pop("warnings", []))
        record.evidence = evidence
        for warning in record.warnings:
            log.warning("%s: %s", step.name, warning)
