"""The denoising loop as the denoiser sees it, and the cache context some pipelines forget to set.

diffusers' Flux and QwenImage pipelines run each denoiser call inside `transformer.cache_context("cond")` and
keep `pipe.current_timestep`; stateful cache hooks (FirstBlockCache, TaylorSeer, MagCache, FasterCache's
state) need the first, PAB and FasterCache the second. In diffusers 0.42 the SD3 and PixArt pipelines have
neither. `DenoiseTracker` supplies both from our side, without touching diffusers' code:

- a new generation starts when the pipeline calls `scheduler.set_timesteps` (every pipeline does, once per
  call, before its loop); observers run then (the diffusers caches reset their hook state there, which the
  SD3/PixArt pipelines never do because their denoisers lack CacheMixin);
- each denoiser call gets a forward pre-hook that reads the `timestep` argument (the pipeline's own `t` on
  SD3/PixArt) and, where asked, sets the cache context for the duration of the call (a forward hook with
  `always_call` clears it, even on error). SD3/PixArt batch the unconditional and conditional halves in ONE
  call, so one context ("cond") covers both and the hooks see the whole CFG batch, as FasterCache expects;
  SD3's extra skip-layer-guidance call gets its own context ("skip_layers").
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

#: Context name for an ordinary denoiser call (the CFG batch included), as diffusers' Flux pipeline uses.
MAIN_CONTEXT = "cond"
#: SD3 skip-layer guidance calls the denoiser a second time per step with other inputs.
SKIP_LAYERS_CONTEXT = "skip_layers"


def _timestep_value(args: tuple, kwargs: dict) -> Optional[float]:
    """The denoiser call's timestep (keyword `timestep`, or the second positional argument as in UNets)."""
    value = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if value is None:
        return None
    if torch.is_tensor(value):
        return float(value.detach().flatten()[0].item()) if value.numel() else None
    return float(value)


def pipeline_tracks_timestep(pipe: Any) -> bool:
    """True when the pipeline class keeps `current_timestep` itself (diffusers' Flux, QwenImage, ...)."""
    return isinstance(getattr(type(pipe), "current_timestep", None), property)


class DenoiseTracker:
    """Generations, steps and the current timestep of one pipeline; optionally the cache context too."""

    def __init__(self, pipe: Any, denoiser: torch.nn.Module, supply_context: bool = False):
        self.pipe = pipe
        self.denoiser = denoiser
        self.supply_context = supply_context
        self.generation = 0
        #: Counted only while `measuring` (the evidence pass), so the timed calls read no timestep they
        #: do not need (a host read per denoiser call on a GPU).
        self.measuring = False
        self.generations_measured = 0
        self.steps_run = 0
        self.denoiser_calls = 0
        self.num_inference_steps: Optional[int] = None
        self.timestep: Optional[float] = None
        self._step_index = -1
        self._observers: list[Callable[["DenoiseTracker"], None]] = []
        self._handles: list = []
        self._scheduler = None

    def on_generation(self, observer: Callable[["DenoiseTracker"], None]) -> None:
        """Call `observer(tracker)` when a new generation starts (after the scheduler knows its steps)."""
        self._observers.append(observer)

    def current_timestep(self) -> Optional[float]:
        """The pipeline's current timestep on its 0-1000 scale: its own where it keeps one, else the denoiser's
        timestep argument (which on SD3 and PixArt is exactly the loop's `t`)."""
        if pipeline_tracks_timestep(self.pipe):
            return self.pipe.current_timestep
        return self.timestep

    def attach(self) -> None:
        scheduler = self._scheduler = self.pipe.scheduler
        original = scheduler.set_timesteps

        # functools.wraps keeps the signature: pipelines inspect it to see whether custom sigmas are accepted.
        @functools.wraps(original)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._begin_generation(len(scheduler.timesteps))
            return result

        scheduler.set_timesteps = set_timesteps
        self._handles = [
            self.denoiser.register_forward_pre_hook(self._before_call, with_kwargs=True),
            self.denoiser.register_forward_hook(self._after_call, always_call=True),
        ]

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._scheduler is not None and "set_timesteps" in vars(self._scheduler):
            del self._scheduler.set_timesteps
        self._scheduler = None

    def _begin_generation(self, num_inference_steps: Optional[int]) -> None:
        self.generation += 1
        self.generations_measured += self.measuring
        self.num_inference_steps = num_inference_steps
        self.timestep = None
        self._step_index = -1
        for observer in self._observers:
            observer(self)

    @torch.compiler.disable
    def _before_call(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if self.generation == 0:  # called outside a pipeline (no set_timesteps seen): one generation
            self._begin_generation(None)
        if not (self.measuring or self.supply_context or not pipeline_tracks_timestep(self.pipe)):
            return  # a timed call of a pipeline that keeps its own timestep and cache context: nothing to do
        timestep = _timestep_value(args, kwargs)
        if timestep is None or timestep != self.timestep:
            self._step_index += 1
            self.steps_run += self.measuring
        self.timestep = timestep
        self.denoiser_calls += self.measuring
        if self.supply_context:
            self._set_context(self._context_for(kwargs))

    @torch.compiler.disable
    def _after_call(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        if self.supply_context:
            self._set_context(None)

    def _context_for(self, kwargs: dict) -> Any:
        from diffusers.hooks.hooks import CacheContext

        name = SKIP_LAYERS_CONTEXT if kwargs.get("skip_layers") is not None else MAIN_CONTEXT
        return CacheContext(name, step_index=self._step_index, num_inference_steps=self.num_inference_steps,
                            timestep=self.timestep)

    def _set_context(self, context: Any) -> None:
        # What CacheMixin.cache_context does on entry and exit, for denoisers without the mixin.
        from diffgentor.internals import set_cache_context

        set_cache_context(self.denoiser, context)
