"""torch.compile of pipeline components (`+compile=<option>`), with the compile cost measured, not assumed.

Full mode compiles each component's call in place (what `nn.Module.compile` does), wrapped in a timer that runs
outside the compiled region; regional mode compiles only the repeated blocks (diffusers'
`compile_repeated_blocks`) and times the component with forward hooks. The timers run during the warmup only
(taken out before the timed calls, which run the compiled code bare). The evidence holds the first call's
time (it includes compilation), the steady per-call time after it, and the dynamo counters the run added:
graphs, frames compiled, graph breaks and their reasons. No graph compiled during the run is an error.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from diffgentor.errors import ConfigError, UnsupportedError
from diffgentor.optimize.base import Conflict, EnvVariable, Optimizer
from diffgentor.optimize.registry import register
from diffgentor.optimize.targets import check_component_names, component_mapping, resolve_components

INDUCTOR = "inductor"
#: torch.compile backends that trace with dynamo and run the graphs without generating code.
TRACE_ONLY_BACKENDS = ("eager", "aot_eager")
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes whose extra over their no-CUDA-graphs twin is CUDA graphs, which only exist on CUDA.
CUDA_GRAPH_MODES = {"reduce-overhead": "default", "max-autotune": "max-autotune-no-cudagraphs"}
#: Repeated block classes for denoisers that don't declare `_repeated_blocks` in diffusers 0.42.
REPEATED_BLOCKS_FALLBACK = {
    "SD3Transformer2DModel": ("JointTransformerBlock",),
    "PixArtTransformer2DModel": ("BasicTransformerBlock",),
    "SanaTransformer2DModel": ("SanaTransformerBlock",),
}
#: Components whose pipeline entry point is not `forward`: compile the submodule that entry point runs
#: (pipelines call `vae.decode`, which runs `vae.decoder`; compiling the VAE's forward would never run).
ENTRY_SUBMODULE = {"vae": "decoder"}
#: The seed's inductor settings, by Settings field name.
INDUCTOR_FLAGS = ("conv_1x1_as_mm", "coordinate_descent_tuning", "epilogue_fusion",
                  "coordinate_descent_check_all_directions")


@dataclass
class CompileSettings:
    """torch.compile of pipeline components. DG_COMPILE_MODE / DG_COMPILE_FULLGRAPH / DG_COMPILE_COMPONENTS set
    the defaults (conf/compile/*.yaml); the first call pays the compile (20-40 s per model on a 2-core CPU).

    - `mode`: `max-autotune-no-cudagraphs` (default): autotuned kernels, no CUDA graphs: fast, slow to
      compile. `max-autotune`: plus CUDA graphs: fastest steady state, more memory, re-records on a new shape.
      `reduce-overhead`: CUDA graphs without autotuning. `default`: quickest compile, smallest gain. CPU has
      no CUDA graphs: there the graph modes act like their no-graph twins (recorded as a warning).
    - `backend`: torch.compile's backend. `inductor` (default) generates kernels (the speed); `eager` and
      `aot_eager` only trace with dynamo: the same graphs, guards, graph breaks and recompiles in seconds,
      no speed-up (to find breaks and recompiles fast; `mode` is not used by them).
    - `fullgraph`: true fails on the first graph break (to find them); false (default) splits the graph there.
    - `dynamic`: null lets torch decide (it recompiles once when a shape changes); true compiles for symbolic
      shapes (no recompiles across resolutions, slightly slower kernels); false specialises every shape.
    - `components`: pipeline attributes to compile. `transformer` means the denoiser (`unet` on SD/SDXL);
      a name the pipeline lacks is an error.
    - `regional`: compile only the repeated blocks (compile_repeated_blocks): about the same steady speed,
      several times less compile time. Default false (whole model: most fusion across blocks).
    - `channels_last`: store the components' 4-D (conv) weights channels-last before compiling: faster
      convolutions (UNets); DiTs have almost no conv weights, and the evidence says how many were converted.
    - Inductor (the seed's four, process-wide while compiled): `conv_1x1_as_mm` (1x1 convs as matmuls),
      `coordinate_descent_tuning` (tune kernel block sizes: slower compile, faster kernels),
      `epilogue_fusion` (off in the seed: keeps matmul templates free of fused pointwise epilogues),
      `coordinate_descent_check_all_directions` (wider tuning search: slower compile).
    """

    name: str = "max-autotune-no-cudagraphs"
    mode: str = "max-autotune-no-cudagraphs"
    backend: str = "inductor"
    fullgraph: bool = False
    dynamic: Optional[bool] = None
    components: list[str] = field(default_factory=lambda: ["transformer"])
    regional: bool = False
    channels_last: bool = True
    conv_1x1_as_mm: bool = True
    coordinate_descent_tuning: bool = True
    epilogue_fusion: bool = False
    coordinate_descent_check_all_directions: bool = True


class CallTimer:
    """Wall time of each call of one component until the timed calls begin (synchronised on the run's device:
    the warmup is not timed); the first call includes compiling."""

    def __init__(self, device: str):
        from diffgentor.accelerator import synchronize

        self.device = device
        self.durations_s: list[float] = []
        self._start = 0.0
        self._synchronize = synchronize
        #: Set when the timer was taken out before the timed calls: what it holds is the warmup's calls.
        self.stopped_before_timed_calls = False

    def _sync(self) -> None:
        self._synchronize(self.device)

    def start(self, *_: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def stop(self, *_: Any) -> None:
        self._sync()
        self.durations_s.append(time.perf_counter() - self._start)

    def wrap(self, fn: Callable) -> Callable:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.start()
            out = fn(*args, **kwargs)
            self.stop()
            return out
        return timed

    def summary(self) -> dict:
        measured = {"measured_in": "warmup" if self.stopped_before_timed_calls else "every call"}
        if not self.durations_s:
            return {"calls": 0, **measured,
                    **({"note": "no warmup to time: compiling is inside the first timed call"}
                       if self.stopped_before_timed_calls else {})}
        first, rest = self.durations_s[0], self.durations_s[1:]
        steady = statistics.median(rest) if rest else None
        return {
            **measured,
            "calls": len(self.durations_s),
            "first_call_s": first,
            "steady_call_s": steady,
            "compile_overhead_s": first - steady if steady is not None else None,
        }


def dynamo_counters() -> dict:
    """The dynamo counters the evidence reports (process-wide; the evidence takes differences)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": counters["stats"]["unique_graphs"],
        "frames_compiled": counters["frames"]["ok"],
        "graph_breaks": sum(counters["graph_break"].values()),
        "graph_break_reasons": dict(counters["graph_break"]),
    }


def _inductor_config() -> Any:
    import torch._inductor.config as inductor_config

    return inductor_config


@register
class Compile(Optimizer):
    name = "compile"
    stage = "compile"
    config_group = "compile"
    Settings = CompileSettings
    env_variables = (EnvVariable("DG_COMPILE_MODE", "mode", "torch.compile mode", choices=MODES),
                     EnvVariable("DG_COMPILE_FULLGRAPH", "fullgraph", "torch.compile fullgraph"),
                     EnvVariable("DG_COMPILE_COMPONENTS", "components",
                                 "pipeline components to compile, comma separated"))
    conflicts = (
        # CUDA graphs replay into the same static buffers on every call; a cache keeps tensors from one
        # denoiser call for the next (residuals, features, Taylor factors), which the next replay overwrites.
        # Until a GPU test shows a cache intact under graphs, the pair is refused (on CPU these modes capture
        # no graphs, but a dry run here must refuse what the GPU would get wrong).
        Conflict("cache", "compile:cuda_graphs", "error",
                 "a cache keeps tensors across denoiser calls and CUDA graphs overwrite them at each replay; use "
                 "compile.mode=max-autotune-no-cudagraphs (or default) with a cache"),
        Conflict("compile:regional", "compile:cuda_graphs", "error",
                 "regional compile shares one compiled block between blocks of different weights, which CUDA "
                 "graphs would record once per block (untested on a GPU here); use "
                 "compile.mode=max-autotune-no-cudagraphs (or default) with compile.regional=true"),
    )

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        return cls.active_group(run_cfg)

    def tags(self) -> set[str]:
        """"compile:cuda_graphs" for the modes that capture CUDA graphs, "compile:regional" or "compile:whole"
        (whole components), "compile:fullgraph" and "compile:whole_fullgraph" (the declared conflicts refuse
        what cannot combine with them; the caches declare theirs)."""
        tags = {self.name}
        if self.settings.mode in CUDA_GRAPH_MODES and self.settings.backend == INDUCTOR:
            tags.add("compile:cuda_graphs")
        tags.add("compile:regional" if self.settings.regional else "compile:whole")
        if self.settings.fullgraph:
            tags.add("compile:fullgraph")
            if not self.settings.regional:
                tags.add("compile:whole_fullgraph")
        return tags

    def check(self, family: str) -> None:
        s = self.settings
        if s.mode not in MODES:
            raise ConfigError(f"compile.mode={s.mode!r} is not a torch.compile mode; use one of {', '.join(MODES)}")
        if s.backend not in (INDUCTOR, *TRACE_ONLY_BACKENDS):
            raise ConfigError(f"compile.backend={s.backend!r} is not one diffgentor runs; use {INDUCTOR} (kernels) "
                              f"or {' / '.join(TRACE_ONLY_BACKENDS)} (dynamo tracing only)")
        if not s.components:
            raise ConfigError("compile.components is empty: name at least one, e.g. compile.components=[transformer]")
        check_component_names("compile.components", s.components, family)

    def apply(self, pipe: Any) -> None:
        import torch

        s = self.settings
        self._mapping = component_mapping(s.components, pipe)
        components = resolve_components("compile.components", s.components, pipe)
        for name, attr in ENTRY_SUBMODULE.items():
            if name in components and hasattr(components[name], attr):
                components[name] = getattr(components[name], attr)
                self._mapping = {k: f"{v}.{attr}" if v == name else v for k, v in self._mapping.items()}
        self._set_inductor_flags()
        self._before = dynamo_counters()
        self._timers: dict[str, CallTimer] = {}
        self._handles: list = []
        self._compiled: dict[str, list] = {}
        self._bare_calls: dict[str, Callable] = {}
        options = {"backend": s.backend, "mode": s.mode if s.backend == INDUCTOR else None,
                   "fullgraph": s.fullgraph, "dynamic": s.dynamic}
        for name, module in components.items():
            timer = self._timers[name] = CallTimer(self.device)
            if s.regional:
                self._compiled[name] = self._compile_blocks(name, module, options)
                self._handles += [module.register_forward_pre_hook(timer.start),
                                  module.register_forward_hook(timer.stop)]
            else:
                compiled = self._bare_calls[name] = torch.compile(module._call_impl, **options)
                module._compiled_call_impl = timer.wrap(compiled)
                self._compiled[name] = [module]

    def before_timed_calls(self, pipe: Any) -> None:
        """The timers measured the warmup (the first call compiles, the later ones are steady); the timed calls
        run the compiled code bare: no timer, no device sync per call."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for name, compiled in self._bare_calls.items():
            self._compiled[name][0]._compiled_call_impl = compiled
        for timer in self._timers.values():
            timer.stopped_before_timed_calls = True

    @staticmethod
    def _compile_blocks(name: str, module: Any, options: dict) -> list:
        from diffgentor.internals import repeated_block_classes

        classes = repeated_block_classes(module) or REPEATED_BLOCKS_FALLBACK.get(type(module).__name__)
        if not classes:
            raise UnsupportedError(
                f"compile.regional: {name} ({type(module).__name__}) has no known repeated blocks; "
                "use compile.regional=false"
            )
        blocks = [m for m in module.modules() if type(m).__name__ in classes]
        if not blocks:
            raise UnsupportedError(f"compile.regional: no {', '.join(classes)} block found in {name}; "
                                   "use compile.regional=false")
        for block in blocks:
            block.compile(**options)
        return blocks

    def _set_inductor_flags(self) -> None:
        config = _inductor_config()
        self._previous_flags = {flag: getattr(config, flag) for flag in INDUCTOR_FLAGS}
        for flag in INDUCTOR_FLAGS:
            setattr(config, flag, getattr(self.settings, flag))

    def evidence(self, pipe: Any) -> dict:
        after = dynamo_counters()
        added = {k: after[k] - self._before[k] for k in ("graphs", "frames_compiled", "graph_breaks")}
        if added["graphs"] <= 0:
            raise UnsupportedError("compile: no graph was compiled during the run, so compile had no effect")
        idle = [name for name, timer in self._timers.items()
                if not timer.durations_s and not timer.stopped_before_timed_calls]
        if idle:
            raise UnsupportedError(f"compile: {', '.join(idle)} was compiled but never called during the run; "
                                   "drop it from compile.components")
        reasons = {r.splitlines()[0][:160]: n - self._before["graph_break_reasons"].get(r, 0)
                   for r, n in after["graph_break_reasons"].items()}
        config = _inductor_config()
        evidence = {
            "components": self._mapping,
            "backend": self.settings.backend,
            "regional": self.settings.regional,
            "compiled_modules": {name: len(mods) for name, mods in self._compiled.items()},
            "timing": {name: timer.summary() for name, timer in self._timers.items()},
            "dynamo": {**added, "graph_break_reasons": {r: n for r, n in reasons.items() if n > 0}},
            "inductor": {flag: getattr(config, flag) for flag in INDUCTOR_FLAGS},
        }
        twin = CUDA_GRAPH_MODES.get(self.settings.mode)
        if self.settings.backend != INDUCTOR:
            evidence["warnings"] = [f"backend {self.settings.backend} only traces: graphs, breaks and recompiles "
                                    "are real, the speed is not compiled code's"]
        elif twin and not self.device.startswith("cuda"):
            evidence["warnings"] = [f"mode {self.settings.mode} adds CUDA graphs, which {self.device} lacks: "
                                    f"it ran like {twin}"]
        return evidence

    def release(self) -> None:
        """Inductor flags back to what they were before this run."""
        config = _inductor_config()
        for flag, value in getattr(self, "_previous_flags", {}).items():
            setattr(config, flag, value)

    def remove(self, pipe: Any) -> None:
        for handle in self._handles:
            handle.remove()
        for modules in self._compiled.values():
            for module in modules:
                module._compiled_call_impl = None
        self.release()
