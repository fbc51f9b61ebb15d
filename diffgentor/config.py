"""Structured configs: the typed schema behind conf/, registered in Hydra's ConfigStore.

A typo in a group option, a key or a value's type fails when Hydra composes the config, with Hydra's own
message. Optimizer option schemas are registered from the optimizer registry (each optimizer module owns
its settings dataclass), as `schema/<group>/<name>`, which conf/<group>/<option>.yaml files extend with
`- /schema/<group>/<name>@_here_`: kept out of the groups themselves, so that no schema is offered as an
option (`+cache=<schema>` would skip the option file and its DG_* variables). `--help` lists the groups of
conf/ only (the `dg.option_groups` resolver in conf/config.yaml's help template).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffgentor.envvars import register_resolvers
from diffgentor.errors import ConfigError, DiffgentorError


class Dtype(str, Enum):
    """Weights/compute dtype. `auto` is bf16 on CUDA and fp32 elsewhere (CPU bf16 is slow and lossy)."""

    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class ModelConfig:
    """Which pipeline to load, and the generation defaults that suit it.

    `path` (a hub id or a local diffusers folder) wins over `testbed` (an embedded tiny model built offline).
    `family` is read from model_index.json when reachable; the value here is used when it is not (a hub id
    offline, a dry run), so refusals can happen before any download.
    """

    name: str = MISSING
    testbed: Optional[str] = None
    path: Optional[str] = None
    family: Optional[str] = None
    revision: Optional[str] = None
    variant: Optional[str] = None
    steps: int = 28
    guidance_scale: float = 3.5
    height: int = 1024
    width: int = 1024
    #: Extra pipeline-call arguments this model needs (e.g. PixArt at sizes outside its resolution bins).
    call_kwargs: Dict[str, Any] = field(default_factory=dict)


@dataclass
class PrecisionConfig:
    """dtype of the loaded weights, and TF32 math for fp32 matmuls (seed: on by default; GPU only)."""

    dtype: Dtype = Dtype.auto
    tf32: bool = True


@dataclass
class QualityConfig:
    """Quality against reference images (`+quality=reference`, diffgentor/reference.py): `dir` is where
    references are cached (null: `<cache_dir>/references`); option `none` makes none."""

    name: str = "reference"
    dir: Optional[str] = None


@dataclass
class TuneConfig:
    """A tuning study's budget (set by the tune_* experiments, diffgentor/tune.py): the recommendation is the
    fastest trial whose PSNR against the references is at least `min_psnr` dB."""

    min_psnr: float = 30.0


@dataclass
class BenchmarkConfig:
    """Timing protocol. Warmup passes run the first batch and are excluded from latency.

    `warmup` defaults to 1 on every device: the first call of a freshly loaded pipeline pays one-time costs
    (CUDA kernel selection, allocator growth, lazy init, compilation) that are not steady-state latency.
    `repeats` times every batch that many times; latency is the median over all timed calls.
    `min_timed_calls` (default 3) repeats the batches evenly when they are fewer, so that even a one-image
    run's latency has a spread (min, max over the timed calls) to tell a difference from noise.
    """

    warmup: int = 1
    repeats: int = 1
    min_timed_calls: int = 3


@dataclass
class SweepConfig:
    """How a multirun's summary (diffgentor/sweep/) compares its jobs.

    `baseline`: the job every other job is compared with: speedup = baseline latency / job latency, and
    PSNR / SSIM / LPIPS of each image against the baseline's image for the same prompt and seed. null (default):
    the successful job with no optimizations (only precision settings), the first such when several are; or a
    job number (`sweep.baseline=0`), a job folder name, or the job's overrides quoted
    (`'sweep.baseline="+cache=none"'`). The summary says which job it used and why.
    """

    baseline: Optional[str] = None


@dataclass
class RunConfig:
    """One run: a model, its precision, optional optimizer groups, and what to generate."""

    model: ModelConfig = MISSING
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    # Optional add-on groups, absent from the defaults list and appended with `+group=option`.
    compile: Optional[Any] = None
    attention: Optional[Any] = None
    cache: Optional[Any] = None
    memory: Optional[Any] = None
    tracking: Optional[Any] = None
    parallel: Optional[Any] = None
    quality: Optional[Any] = None
    #: A tuning study's budget (conf/experiment/tune_*.yaml; diffgentor/tune.py); None outside one.
    tune: Optional[TuneConfig] = None
    fuse_qkv: bool = False

    prompt: str = MISSING
    prompts_file: Optional[str] = None
    negative_prompt: Optional[str] = None
    num_images_per_prompt: int = 1
    batch_size: int = 1
    seed: int = 0
    steps: int = MISSING
    guidance_scale: float = MISSING
    height: int = MISSING
    width: int = MISSING
    device: str = "auto"
    #: Pipeline-call arguments FLUX users pass (null: the model entry's call_kwargs / the pipeline default).
    #: Refused before load when the pipeline's __call__ does not take them.
    max_sequence_length: Optional[int] = None
    true_cfg_scale: Optional[float] = None
    #: torch CPU threads (intra-op). null: OMP_NUM_THREADS if set, else torch's default of one per core.
    #: On a shared machine use threads=1: extra threads oversubscribe the cores (diffgentor/threads.py).
    threads: Optional[int] = None
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)

    #: Print the ordered optimization plan and exit without loading weights.
    dry_run: bool = False
    #: Where embedded testbed pipelines are built (once) and cached.
    cache_dir: str = "~/.cache/diffgentor"
    #: Show the run's image progress bar. false silences every bar.
    progress: bool = True
    #: Also show the pipeline's per-step bar of every call (with progress=true).
    progress_steps: bool = False
    #: Multirun summary settings (baseline choice).
    sweep: SweepConfig = field(default_factory=SweepConfig)
    #: Rerunning a sweep into the same folder (hydra.sweep.dir=...): skip each job whose run.json is "ok" for
    #: the same resolved config (hashed without resume, progress, cache_dir, sweep) and has all its images.
    resume: bool = False
    #: Replace the results already in the run folder (its run.json and images); without it such a folder is refused.
    overwrite: bool = False
    #: In a multirun of Hydra's basic launcher, a job with the same weights as the last (location, revision,
    #: variant, dtype, device) takes its pipeline, every optimization removed, instead of loading it again
    #: (loaded_models.py). Other launchers never reuse.
    reuse_model: bool = True
    #: At most this many loaded pipelines kept between jobs (each holds its weights in memory).
    reuse_model_max: int = 1


def resolve_config(cfg: Any) -> Any:
    """Typed RunConfig object with every interpolation (DG_* variables included) resolved."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__ or exc.__context__  # OmegaConf re-raises resolver errors inside its own
        while cause is not None and not isinstance(cause, DiffgentorError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, DiffgentorError):
            raise ConfigError(str(cause)) from exc
        raise ConfigError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc


def register_configs() -> None:
    """Register the root schema, group schemas and the `dg.env` resolver (idempotent)."""
    from diffgentor.jobdirs import register_job_dir_resolver
    from diffgentor.optimize.registry import load_all

    register_resolvers()
    register_job_dir_resolver()
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    cs.store(group=f"{SCHEMA_GROUP}/model", name="model", node=ModelConfig)
    cs.store(group=f"{SCHEMA_GROUP}/precision", name="precision", node=PrecisionConfig)
    cs.store(group=f"{SCHEMA_GROUP}/quality", name="quality", node=QualityConfig)
    for name, optimizer in load_all().items():
        if optimizer.config_group and optimizer.Settings is not None:
            cs.store(group=f"{SCHEMA_GROUP}/{optimizer.config_group}", name=name, node=optimizer.Settings)
    if not OmegaConf.has_resolver("dg.option_groups"):
        OmegaConf.register_new_resolver("dg.option_groups", option_groups)


#: Config-store group holding the schemas behind conf/'s option files (not options themselves).
SCHEMA_GROUP = "schema"


def _config_dir() -> Path:
    """conf/ as the installed package carries it (a wheel: diffgentor/conf, with experiments/ inside), else
    the repository's top-level conf/ beside the package (a checkout, an editable install)."""
    package = Path(__file__).resolve().parent
    installed = package / "conf"
    return installed if (installed / "config.yaml").is_file() else package.parent / "conf"


CONFIG_DIR = _config_dir()


def option_groups() -> str:
    """`group: option, ...` for every option folder of conf/, as --help lists them (schemas left out)."""
    lines = []
    for folder, _, files in sorted(os.walk(CONFIG_DIR, followlinks=True)):  # conf/experiment is a link
        group = Path(folder).relative_to(CONFIG_DIR).as_posix()
        options = sorted(Path(f).stem for f in files if f.endswith(".yaml"))
        if options and group != "." and group.split("/")[0] != "hydra":
            lines.append(f"{group}: {', '.join(options)}")
    return "\n".join(lines)
