"""cache-dit's DBCache (the cache-dit package) on the DiT pipelines it recognises: FLUX, SD3, PixArt, ...

DBCache ("dual block cache") always runs the first Fn and last Bn blocks; when the first Fn blocks' residual
changed by less than `residual_diff_threshold` since the last full step, the middle blocks are skipped and
their cached residual reused. An optional TaylorSeer calibrator forecasts that residual instead of reusing it.
cache-dit recognises pipelines by class name and refuses UNet pipelines (SD, SDXL). Its disable_cache leaves
patched forwards behind; removal here puts every module of the denoiser back as it was.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from diffgentor.optimize.base import Conflict
from diffgentor.optimize.cache.base import CacheOptimizer, require_at_least
from diffgentor.optimize.registry import register

if TYPE_CHECKING:
    import torch


@dataclass
class CacheDitSettings:
    """cache-dit DBCache (field names as in cache-dit's DBCacheConfig).

    - `Fn_compute_blocks` (default 8): the first n blocks always run; their residual decides whether to
      skip. More is more faithful and slower; a model with no more blocks than Fn + Bn never skips (Fn
      and Bn are capped at the model's block count, with a warning).
    - `Bn_compute_blocks` (default 0): the last n blocks always run too, correcting the cached middle.
    - `residual_diff_threshold` (default 0.08): relative L1 change of the Fn residual under which the middle
      blocks are skipped. Higher skips more, drifts more.
    - `max_warmup_steps` (default 8): the first steps never skip. Lower skips earlier.
    - `warmup_interval` (default 1): during warmup, compute only every n-th step.
    - `max_cached_steps` (default -1: no limit): at most this many skipped steps per generation.
    - `max_continuous_cached_steps` (default -1: no limit): at most this many skipped steps in a row.
    - `enable_separate_cfg` (default null: cache-dit's choice by pipeline class, true for QwenImage): read
      consecutive denoiser calls as cond/uncond pairs of one step, each pair member with its own cache. Right
      for QwenImage WITH a negative prompt (true CFG: two calls per step). Without one QwenImage makes one call
      per step and cache-dit, still pairing them, counts half the steps (its warmup lasts twice as many
      calls) and compares each call with the one two steps back (measured on the testbed); the evidence then
      warns, and `false` is the fix.
    - `taylorseer` (default false): forecast the cached residual with cache-dit's TaylorSeer calibrator
      (more faithful at the same skipping) of order `taylorseer_order` (default 1). cache-dit 1.5 forms the
      first derivative only at the 4th fully computed step: with max_warmup_steps < 4 the forecast equals
      plain reuse until then (measured on the testbed).
    """

    name: str = "cache_dit"
    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    enable_separate_cfg: Optional[bool] = None
    taylorseer: bool = False
    taylorseer_order: int = 1


@contextlib.contextmanager
def quiet_cache_dit(level: int = logging.WARNING) -> Iterator[None]:
    """cache-dit logs every option at INFO through one stdout handler shared by its loggers; raise its level."""
    from cache_dit import logger as cache_dit_logger

    handler = getattr(cache_dit_logger, "_default_handler", None)
    if handler is None:
        yield
        return
    previous = handler.level
    handler.setLevel(level)
    try:
        yield
    finally:
        handler.setLevel(previous)


def module_state(root: torch.nn.Module) -> list[tuple[torch.nn.Module, Any, set[str], dict]]:
    """Per module: its instance-level `forward` (None: the class's), its attribute names, its children."""
    return [(m, vars(m).get("forward"), set(vars(m)), dict(m._modules)) for m in root.modules()]


def restore_module_state(state: list[tuple[torch.nn.Module, Any, set[str], dict]]) -> list[str]:
    """Put back every module's `forward` and children (objects and order), drop attributes added since
    `state`; returns what had to be undone."""
    undone = []
    for module, forward, names, children in state:
        kind = type(module).__name__
        if vars(module).get("forward") is not forward:
            undone.append(f"{kind}.forward")
            if forward is None:
                del module.forward
            else:
                module.forward = forward
        for name in set(vars(module)) - names - {"forward"}:
            undone.append(f"{kind}.{name}")
            delattr(module, name)
        if list(module._modules.items()) != list(children.items()):
            undone.append(f"{kind} children")
            module._modules.clear()
            module._modules.update(children)
    return undone


@register
class CacheDit(CacheOptimizer):
    name = "cache_dit"
    families = frozenset({"flux", "sd3", "pixart", "qwenimage", "sana"})
    refused_because = "cache-dit adapts the DiT pipelines it recognises by class name and refuses UNet pipelines"
    Settings = CacheDitSettings
    requires = ("cache_dit", "cache-dit", "cache-dit")
    no_skip_hint = ("Raise cache.residual_diff_threshold, lower cache.max_warmup_steps, or make "
                    "cache.Fn_compute_blocks + cache.Bn_compute_blocks smaller than the model's block count.")
    # Measured on shapes-flux: whole-model compile with fullgraph=true meets functions cache-dit marks as
    # skipped and fails after load; regionally compiled blocks with fullgraph=true are clean.
    conflicts = (
        Conflict("compile:whole_fullgraph", "cache_dit", "error",
                 "cache-dit's cached-blocks wrapper calls functions dynamo skips, which fullgraph=true refuses "
                 "when the whole denoiser is compiled; use compile.fullgraph=false or compile.regional=true"),
    )

    def check_settings(self, family: str) -> None:
        s = self.settings
        require_at_least("Fn_compute_blocks", s.Fn_compute_blocks, 1)
        require_at_least("Bn_compute_blocks", s.Bn_compute_blocks, 0)
        require_at_least("residual_diff_threshold", s.residual_diff_threshold, 0.0)
        require_at_least("max_warmup_steps", s.max_warmup_steps, 0)
        require_at_least("warmup_interval", s.warmup_interval, 1)
        require_at_least("taylorseer_order", s.taylorseer_order, 1)

    def install(self, pipe: Any) -> Callable[[], None]:
        import cache_dit

        s = self.settings
        fn, bn = self._fit_to_model(len(self.counter.blocks))
        config = cache_dit.DBCacheConfig(
            Fn_compute_blocks=fn, Bn_compute_blocks=bn,
            residual_diff_threshold=float(s.residual_diff_threshold), max_warmup_steps=int(s.max_warmup_steps),
            warmup_interval=int(s.warmup_interval), max_cached_steps=int(s.max_cached_steps),
            max_continuous_cached_steps=int(s.max_continuous_cached_steps),
            enable_separate_cfg=None if s.enable_separate_cfg is None else bool(s.enable_separate_cfg))
        self._config = config  # cache-dit resolves enable_separate_cfg on this object when it is None
        calibrator = (cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=int(s.taylorseer_order))
                      if s.taylorseer else None)
        self._state = module_state(self.denoiser)
        # ERROR: its warnings here are about skipping its own forward-pattern check (hooks already present).
        with quiet_cache_dit(logging.ERROR):
            cache_dit.enable_cache(pipe, cache_config=config, calibrator_config=calibrator)
        return lambda: self._disable(pipe)

    def _fit_to_model(self, blocks: int) -> tuple[int, int]:
        """cache-dit asserts Fn <= the model's block count at the first call; cache-dit's default Fn=8 exceeds
        small models (the testbeds have 4-6 blocks). Cap Fn/Bn there, and say so in the evidence."""
        s = self.settings
        fn, bn = min(int(s.Fn_compute_blocks), blocks), min(int(s.Bn_compute_blocks), blocks)
        self._capped = None
        if (fn, bn) != (s.Fn_compute_blocks, s.Bn_compute_blocks):
            self._capped = (f"Fn_compute_blocks={s.Fn_compute_blocks} / Bn_compute_blocks={s.Bn_compute_blocks} "
                            f"exceed the {blocks} blocks of {type(self.denoiser).__name__}: ran with Fn={fn}, "
                            f"Bn={bn}; set e.g. cache.Fn_compute_blocks={max(1, blocks // 4)} to leave blocks "
                            f"to skip")
        self._used = {"Fn_compute_blocks": fn, "Bn_compute_blocks": bn}
        return fn, bn

    def _disable(self, pipe: Any) -> None:
        import cache_dit

        with quiet_cache_dit(logging.ERROR):  # it warns "hooks disabled": that is what was asked
            cache_dit.disable_cache(pipe)
        # cache-dit 1.5 leaves its patch functors in place (FLUX: the transformer's and single blocks'
        # forward, `_is_patched`): same numbers, but other block hooks then meet changed signatures.
        self.left_behind = restore_module_state(self._state)

    def cache_evidence(self, pipe: Any) -> dict:
        """cache-dit's own account of the last generation beside ours: the steps it says it cached must be
        the steps whose block compute we measured below full."""
        import cache_dit

        from diffgentor.optimize.cache.counting import FULL_SHARE

        with quiet_cache_dit():
            stats = cache_dit.summary(self.denoiser, logging=False)
        separate_cfg = bool(self._config.enable_separate_cfg)
        reported = sorted({int(step) for st in stats for step in st.cached_steps})
        reported_cfg = sorted({int(step) for st in stats for step in st.cfg_cached_steps})
        fractions = self.counter.summary()["last_generation_call_fractions"]
        measured = [i for i, f in enumerate(fractions) if f is not None and f < FULL_SHARE]
        # Measured per denoiser call; cache-dit counts steps. With separate CFG, its step s is the call pair
        # (2s, 2s+1): cond first unless cfg_compute_first.
        expected = reported
        if separate_cfg:
            cond, uncond = (1, 0) if self._config.cfg_compute_first else (0, 1)
            expected = sorted([2 * step + cond for step in reported] + [2 * step + uncond for step in reported_cfg])
        evidence: dict = {"cache_dit_cached_steps": reported, "cache_dit_cfg_cached_steps": reported_cfg,
                          "enable_separate_cfg": separate_cfg, "measured_cached_calls": measured, **self._used,
                          "warnings": [self._capped] if self._capped else []}
        steps = self.tracker.steps_run // max(self.tracker.generations_measured, 1)
        if separate_cfg and len(fractions) == steps:
            evidence["warnings"].append(
                f"cache-dit read the {steps} single denoiser calls of each generation as cond/uncond pairs "
                f"(enable_separate_cfg, its choice for {type(pipe).__name__}), but the pipeline ran one call per "
                f"step (no negative prompt): it counted half the steps and compared each call with the one two "
                f"steps back. Set cache.enable_separate_cfg=false, or give a negative prompt")
        elif expected != measured:
            evidence["warnings"].append(f"cache-dit reports cached steps {reported}"
                                        + (f" (uncond: {reported_cfg})" if separate_cfg else "")
                                        + f", but block compute was reduced at denoiser calls {measured}")
        if self.settings.taylorseer and self.settings.max_warmup_steps < 4:
            evidence["warnings"].append("taylorseer: cache-dit forms its first derivative at the 4th full step; "
                                        "with max_warmup_steps < 4 early forecasts equal plain reuse")
        return evidence
