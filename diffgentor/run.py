"""One run, start to finish: resolve -> plan -> load -> optimize -> generate -> record.

Everything that can be refused (config values, family support, conflicts, packages, prompts) is refused
before weights load. Everything finished is kept: images are written as they come, and run.json is
rewritten after each batch, so a failure part-way leaves the work done and says "failed".
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

from diffgentor.errors import ConfigError, DiffgentorError
from diffgentor.generate import GenerationSettings, generate, peak_memory
from diffgentor.optimize.plan import Plan, apply_plan, build_plan, collect_evidence, release_plan
from diffgentor.pipeline import check_size, load_pipeline, resolve_device, resolve_dtype, resolve_source
from diffgentor.prompts import PromptSpec, batches, image_jobs, read_prompts_file
from diffgentor.record import IMAGES_DIR, RunRecord, environment, save_image

log = logging.getLogger(__name__)


def resolve_config(cfg: DictConfig) -> Any:
    """Typed RunConfig object with every interpolation (DG_* variables included) resolved."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, DiffgentorError):
            cause = cause.__cause__
        if isinstance(cause, DiffgentorError):
            raise ConfigError(str(cause)) from exc
        raise ConfigError(f"invalid configuration: {str(exc).splitlines()[0]}") from exc


def config_as_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def prompt_specs(run_cfg: Any) -> list[PromptSpec]:
    if run_cfg.prompts_file:
        return read_prompts_file(run_cfg.prompts_file)
    if not run_cfg.prompt or not run_cfg.prompt.strip():
        raise ConfigError("prompt is empty: set prompt='...' or prompts_file=PATH")
    return [PromptSpec(run_cfg.prompt)]


def prepare(run_cfg: Any) -> tuple[Any, str, Plan]:
    """Everything before load: device, model source and family, and the checked optimization plan."""
    device = resolve_device(run_cfg.device)
    source = resolve_source(run_cfg.model, run_cfg.cache_dir)
    plan = build_plan(run_cfg, source.family)
    return source, device, plan


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Optional[dict]:
    """Run one configuration into `run_dir`; returns run.json's data (None for a dry run)."""
    run_cfg = resolve_config(cfg)
    source, device, plan = prepare(run_cfg)
    if run_cfg.dry_run:
        print(f"model: {source.model_id} ({source.family}, {source.location})  device: {device}")
        print(plan.describe())
        return None
    plan.raise_if_refused()
    for warning in plan.warnings:
        log.warning(warning)
    jobs = image_jobs(prompt_specs(run_cfg), run_cfg.num_images_per_prompt, run_cfg.seed,
                      run_cfg.negative_prompt)
    job_batches = batches(jobs, run_cfg.batch_size)

    record = RunRecord(run_dir, {
        "config": config_as_dict(cfg),
        "overrides": list(overrides),
        "model": {"id": source.model_id, "family": source.family, "pipeline_class": source.pipeline_class,
                  "location": source.location},
        "environment": environment(device),
    })
    try:
        _generate_into(record, run_cfg, source, device, plan, job_batches, run_dir)
    except BaseException as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record.finish("failed", error=f"{type(exc).__name__}: {message}")
        raise
    finally:
        release_plan(plan)  # process-wide state (attention registry, compiler flags) clean for the next job
    record.finish("ok")
    return record.data


def _generate_into(record: RunRecord, run_cfg: Any, source: Any, device: str, plan: Plan,
                   job_batches: list, run_dir: Path) -> None:
    dtype = resolve_dtype(run_cfg.precision.dtype.value, device)
    start = time.perf_counter()
    pipe = load_pipeline(source, run_cfg.model, dtype)
    pipe.to(device)
    load_s = time.perf_counter() - start
    check_size(pipe, run_cfg.height, run_cfg.width)
    pipe.set_progress_bar_config(disable=not run_cfg.progress, leave=False)

    start = time.perf_counter()
    applied = apply_plan(plan, pipe)
    optimize_s = time.perf_counter() - start
    record.update(timings={"load_s": load_s, "optimize_s": optimize_s}, dtype=str(dtype).replace("torch.", ""))

    settings = GenerationSettings(
        steps=run_cfg.steps, guidance_scale=run_cfg.guidance_scale, height=run_cfg.height,
        width=run_cfg.width, device=device,
        warmup=run_cfg.benchmark.warmup,
        repeats=run_cfg.benchmark.repeats, extra_kwargs=dict(run_cfg.model.call_kwargs),
    )
    if settings.repeats < 1 or settings.warmup < 0:
        raise ConfigError("benchmark.repeats must be >= 1 and benchmark.warmup >= 0")
    images_dir = run_dir / IMAGES_DIR

    def keep(batch: list, images: list, latency_s: float) -> None:
        for job, image in zip(batch, images):
            file = save_image(image, images_dir, job.index, job.prompt, job.seed, source.model_id)
            record.data["images"].append(
                {"file": file, "prompt": job.prompt, "seed": job.seed, "latency_s": latency_s})
        record.save()

    total = sum(len(b) for b in job_batches)
    with tqdm(total=total, desc="images", unit="img", disable=not run_cfg.progress) as bar:
        timings = generate(pipe, job_batches, settings, keep, progress=bar)
    collect_evidence(plan, pipe, applied)
    record.update(
        timings={"load_s": load_s, "optimize_s": optimize_s, **timings.summary(settings.steps),
                 "warmup_passes": settings.warmup, "repeats": settings.repeats},
        memory=peak_memory(device),
        optimizations=[r.to_json() for r in applied],
    )
