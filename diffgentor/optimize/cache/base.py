"""What every cache optimizer shares: find the denoiser, measure it, prove the skipping, remove cleanly.

A cache's life: `check` (optional package present? settings valid for this family?) before load; `apply`
attaches the DenoiseTracker (generations, and the cache context some pipelines lack) and then the cache
itself (`install`, which returns the function that takes it off again: diffusers' hooks through
diffusers_hooks.install_hook_cache, DeepCache's helper, cache-dit); the timed calls run that alone;
`instrument` attaches the ComputeCounter for the evidence pass after them; `evidence` reports what that
pass measured, loudly flagging a run that skipped nothing; `remove` takes the measurement and the cache
off, leaving the pipeline as it was.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional

from diffgentor.errors import ConfigError, MissingPackageError
from diffgentor.families import FAMILIES
from diffgentor.optimize.base import Optimizer
from diffgentor.optimize.targets import family_of

if TYPE_CHECKING:
    import torch

    from diffgentor.optimize.cache.context import DenoiseTracker
    from diffgentor.optimize.cache.counting import ComputeCounter


def unwrap_compiled(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_orig_mod", module)


def require_range(field: str, value: Any) -> tuple[int, int]:
    """A (low, high) timestep range from a 2-item list, low < high; else a ConfigError naming the field."""
    if value is None or len(value) != 2 or not value[0] < value[1]:
        raise ConfigError(f"cache.{field}={value!r}: give two timesteps [low, high] with low < high, "
                          f"e.g. cache.{field}=[100,800]")
    return int(value[0]), int(value[1])


def require_at_least(field: str, value: Any, minimum: float) -> None:
    if value is None or not math.isfinite(value) or value < minimum:
        raise ConfigError(f"cache.{field}={value!r}: must be a finite number >= {minimum}")


class CacheOptimizer(Optimizer):
    """Base of the `cache` group's optimizers, the only level between Optimizer and a cache: a cache declares
    itself, implements `install` (returning its own remover) and may add check_settings and
    cache_evidence."""

    stage = "cache"
    config_group = "cache"
    # Each cache declares its `families`. SD3/PixArt: diffgentor supplies the cache context and timestep their
    # pipelines lack (context.py). QwenImage: wired by diffusers / cache-dit themselves, measured on
    # tiny-qwenimage (tests/test_caches.py); cache-dit pairs its calls as cond/uncond, right only with a
    # negative prompt, else set cache.enable_separate_cfg=false (its evidence warns).
    #: (import name, pip package, diffgentor extra) of the optional package the cache needs, if any.
    requires: ClassVar[Optional[tuple[str, str, str]]] = None
    #: Which knob to turn when a run skipped nothing; ends the warning.
    no_skip_hint: ClassVar[str] = ""
    #: Tags beside "cache" that conflicts may name (diffusers_hooks.HOOK_CACHE_TAG).
    cache_tags: ClassVar[tuple[str, ...]] = ()
    #: The cache reads diffusers' cache context, which SD3 / PixArt pipelines never set: the tracker sets it
    #: around each denoiser call of a denoiser without CacheMixin.
    needs_cache_context: ClassVar[bool] = False

    denoiser: torch.nn.Module
    tracker: DenoiseTracker
    counter: ComputeCounter

    def tags(self) -> set[str]:
        return {self.name, "cache", *self.cache_tags}

    def check(self, family: str) -> None:
        if self.requires is not None:
            module, package, extra = self.requires
            if importlib.util.find_spec(module) is None:
                raise MissingPackageError(f"+cache={self.name}", package, extra)
        self.check_settings(family)

    def check_settings(self, family: str) -> None:
        """Refuse settings that cannot work (ConfigError naming the field), before load."""

    def supplies_context(self) -> bool:
        """Whether the tracker must set diffusers' cache context around each denoiser call."""
        from diffgentor.optimize.cache.diffusers_hooks import has_cache_mixin

        return self.needs_cache_context and not has_cache_mixin(self.denoiser)

    def install(self, pipe: Any) -> Callable[[], None]:
        """Attach the cache to `self.denoiser` (the tracker is attached); returns what takes it off again."""
        raise NotImplementedError

    def no_skip_advice(self) -> str:
        return self.no_skip_hint

    def cache_evidence(self, pipe: Any) -> dict:
        """The cache's own account (resolved settings, its statistics); merged into the evidence."""
        return {}

    def apply(self, pipe: Any) -> None:
        from diffgentor.optimize.cache.context import DenoiseTracker
        from diffgentor.optimize.cache.counting import ComputeCounter

        self.family = family_of(pipe)
        self.denoiser = unwrap_compiled(getattr(pipe, FAMILIES[self.family].denoiser))
        self.check_settings(self.family)
        self.tracker = DenoiseTracker(pipe, self.denoiser, supply_context=self.supplies_context())
        self.counter = ComputeCounter(self.denoiser, lambda: self.tracker.generation)
        self.tracker.attach()
        try:
            self._uninstall = self.install(pipe)
        except BaseException:
            self.tracker.detach()
            raise

    def instrument(self, pipe: Any) -> None:
        """The evidence pass: count the compute the blocks really run. The counter wraps only layers and
        attention processors, which a cache skips by skipping the block or attention module around them, so
        it can be attached after the cache, and the timed calls never carry it."""
        self.counter.attach()
        self.tracker.measuring = True

    def uninstrument(self, pipe: Any) -> None:
        self.counter.detach()
        self.tracker.measuring = False

    def evidence(self, pipe: Any) -> dict:
        from diffgentor.optimize.cache.counting import FULL_SHARE

        measured = self.counter.summary()
        evidence = {"measured_in": "evidence pass", "steps_run": self.tracker.steps_run,
                    "generations": self.tracker.generations_measured, **measured}
        own = self.cache_evidence(pipe)
        warnings = list(own.pop("warnings", []))
        evidence.update(own)
        fraction = measured["compute_fraction"]
        if fraction is None:
            evidence["skipped_nothing"] = None
            warnings.append("no denoiser block computation was measured (did the denoiser run?): "
                            "compute_fraction is unknown")
        else:
            evidence["skipped_nothing"] = fraction >= FULL_SHARE
            if evidence["skipped_nothing"]:
                calls = measured["block_calls"]["total"]
                warnings.append(
                    f"SKIPPED NOTHING: all {calls} denoiser block calls over {self.tracker.steps_run} steps "
                    f"were computed (compute_fraction 1.0), so this cache only added overhead. "
                    f"{self.no_skip_advice()}".rstrip())
        evidence["warnings"] = warnings
        return evidence

    def remove(self, pipe: Any) -> None:
        self.counter.detach()
        self._uninstall()
        self.tracker.detach()
