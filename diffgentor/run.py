"""One run, start to finish: resolve -> plan -> load -> optimize -> generate -> record.

Everything that can be refused (config values, family support, conflicts, packages, prompts) is refused
before weights load. Everything finished is kept: images are written as they come, and run.json is
rewritten after each batch, so a failure part-way leaves the work done and says "failed".
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from diffgentor.accelerator import end_of_job_cleanup, peak_memory
from diffgentor.config import resolve_config
from diffgentor.console import no_loading_bars
from diffgentor.distributed import (World, agree, current_world, merge_records, rank_device, rank_folder,
                                    records_on_disk, shard)
from diffgentor.errors import ConfigError, DiffgentorError
from diffgentor.generate import GenerationSettings, generate, run_batch
from diffgentor.loaded_models import LOADED, ModelKey, in_process_multirun
from diffgentor.optimize.base import Target
from diffgentor.optimize.plan import AppliedOptimizations, Plan, apply_plan, build_plan, needs_evidence_pass
from diffgentor.pipeline import (ModelSource, call_parameters, check_size, load_pipeline, planned_size_factor,
                                 resolve_device, resolve_dtype, resolve_source, size_problem)
from diffgentor.prompts import ImageJob, PromptSpec, batches, image_jobs, read_prompts_file
from diffgentor.record import IMAGES_DIR, RunRecord, environment, record_size_bound, save_image
from diffgentor.reference import ReferencePlan, make_references, plan_references, reference_files, reference_quality
from diffgentor.reference import wants_references
from diffgentor.resume import failure_message, record_failure
from diffgentor.runfolder import FolderInUseError, own_run_folder
from diffgentor.signals import interrupt_of
from diffgentor.threads import torch_threads
from diffgentor.tune import tune_problems
from diffgentor.validate import MAX_SIDE_PX, InvalidConfigError, problems

log = logging.getLogger(__name__)


def config_as_dict(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def prompt_specs(run_cfg: Any) -> list[PromptSpec]:
    if run_cfg.prompts_file:
        return read_prompts_file(run_cfg.prompts_file)
    if not run_cfg.prompt or not run_cfg.prompt.strip():
        raise ConfigError("prompt is empty: set prompt='...' or prompts_file=PATH")
    return [PromptSpec(run_cfg.prompt)]


#: Pipeline-call arguments the run config passes through when set (seed CLI: --max_sequence_length, ...).
PASS_THROUGH_ARGUMENTS = ("max_sequence_length", "true_cfg_scale")
#: Warmup generations when torch.compile meets a cache: the first generation creates the cache's state and
#: takes paths the later ones never take (and the reverse). Measured: tiny-flux with 16 blocks, regional
#: compile and first_block_cache (threshold 0.5) recompiled in the first timed call after one warmup
#: generation, never after two.
COMPILED_CACHE_WARMUP = 2


@dataclass
class Prepared:
    """What a run knows before load."""

    source: ModelSource
    device: str
    #: The checked optimization plan; `plan.problems` holds the refusals of values, sizes, prompts and
    #: pass-through arguments, so that one raise_if_refused() names every refusal at once.
    plan: Plan
    jobs: list[ImageJob]
    #: This process's share of the jobs, batched (under torchrun: its rank's, unless each image is split).
    job_batches: list = field(default_factory=list)
    #: `+quality=reference`: where the references are cached (None: no references).
    references: Optional[ReferencePlan] = None


def job_device(requested: str) -> str:
    """resolve_device, and with `auto` on a node whose GPUs run a sweep's jobs in parallel (joblib), job N's
    own GPU: cuda:(N % GPUs)."""
    device = rank_device(resolve_device(requested), current_world())
    if requested == "auto" and device == "cuda":
        import torch

        from diffgentor.launchers import parallel_job_gpu

        index = parallel_job_gpu(torch.cuda.device_count())
        if index is not None:
            return f"cuda:{index}"
    return device


def prepare(run_cfg: Any) -> Prepared:
    """Everything before load: device, model source and family, the plan, the image jobs, and every refusal
    (raised by plan.raise_if_refused(), after a dry run has printed the plan)."""
    values = problems(run_cfg)
    try:
        device = job_device(run_cfg.device)
        source = resolve_source(run_cfg.model, run_cfg.cache_dir)
    except DiffgentorError as exc:  # nothing to plan for: the values' problems and this one
        if not values:
            raise
        raise InvalidConfigError([*values, str(exc)]) from exc
    target = Target(source.family, device, resolve_dtype(run_cfg.precision.dtype.value, device))
    plan = build_plan(run_cfg, source.family, target)
    plan.problems = list(values)
    if all(1 <= side <= MAX_SIDE_PX for side in (run_cfg.height, run_cfg.width)):
        size = size_problem(planned_size_factor(source), run_cfg.height, run_cfg.width)
        plan.problems += [size] if size else []
        if not size:
            plan.problems += [problem for step in plan.steps if step.supported
                              for problem in step.optimizer.check_model(source, run_cfg)]
    specs: list[PromptSpec] = []
    passed: dict = {}
    try:
        passed = pass_through_kwargs(run_cfg, source.pipeline_class, call_parameters(source.pipeline_class))
    except ConfigError as exc:
        plan.problems.append(str(exc))
    try:
        specs = prompt_specs(run_cfg)
    except ConfigError as exc:
        plan.problems.append(str(exc))
    jobs = [] if plan.problems else image_jobs(specs, run_cfg.num_images_per_prompt, run_cfg.seed,
                                               run_cfg.negative_prompt)
    plan.problems += tune_problems(run_cfg)
    job_batches = _batches_of(jobs, plan, current_world(), run_cfg.batch_size) if jobs else []
    references = None
    if jobs and wants_references(run_cfg):
        references, refused = plan_references(run_cfg, source, target.dtype, device,
                                              {**run_cfg.model.call_kwargs, **passed}, job_batches, plan.offloads)
        plan.problems += refused
    return Prepared(source, device, plan, jobs, job_batches, references)


def _batches_of(jobs: list[ImageJob], plan: Plan, world: Optional[World], batch_size: int) -> list:
    """The batches `world`'s rank generates: its share of the jobs, or all of them when every rank takes part
    in every image (context parallelism)."""
    return batches(jobs if plan.splits_each_image else shard(jobs, world), batch_size)


def pass_through_kwargs(run_cfg: Any, pipeline_class: Optional[str], accepted: Optional[frozenset]) -> dict:
    """The set pass-through arguments; one the pipeline's __call__ does not take is refused (`accepted`
    None: not known yet, checked again once the pipeline is loaded)."""
    wanted = {key: getattr(run_cfg, key) for key in PASS_THROUGH_ARGUMENTS if getattr(run_cfg, key) is not None}
    for key, value in wanted.items():
        if accepted is not None and key not in accepted:
            raise ConfigError(f"{key}={value}: {pipeline_class} takes no {key}; remove it")
    return wanted


def execute(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> Optional[dict]:
    """Run one configuration into `run_dir`; returns run.json's data (None for a dry run).

    A run refused before load (a config value, the plan, the prompts) still leaves run.json, status "refused"
    with every reason, so a sweep's summary and a later look can tell why. Under torchrun each rank generates
    its share of the images into the same folder (distributed.py)."""
    world = current_world()
    try:
        run_cfg = resolve_config(cfg)
        prepared = prepare(run_cfg)
        source, device, plan, jobs = prepared.source, prepared.device, prepared.plan, prepared.jobs
        if run_cfg.dry_run:
            print(f"model: {source.model_id} ({source.family}, {source.location})  device: {device}")
            print(plan.describe())
        plan.raise_if_refused()
        if run_cfg.dry_run:
            return None
    except DiffgentorError as exc:
        if OmegaConf.select(cfg, "dry_run") is not True and (world is None or world.rank == 0):
            log.info("refused before load: %s", exc)
            with contextlib.suppress(OSError):  # an unwritable folder must not hide the refusal itself
                record_failure(run_dir, cfg, overrides, exc, status="refused")
        raise
    for warning in plan.warnings:
        log.warning(warning)
    log.info("model %s (%s, %s) on %s; plan: %s", source.model_id, source.family, source.location, device,
             ", ".join(step.name for step in plan.steps) or "no optimizations")
    job_batches = prepared.job_batches
    header = {
        "config": config_as_dict(cfg),
        "overrides": list(overrides),
        "model": {"id": source.model_id, "family": source.family, "pipeline_class": source.pipeline_class,
                  "location": source.location},
        "warnings": list(plan.warnings),
    }
    reserve = record_size_bound([job.prompt for job in jobs])

    with contextlib.ExitStack() as held:
        record_dir = _hold_run_folder(held, run_dir, run_cfg, world)
        threads = held.enter_context(torch_threads(run_cfg.threads))
        # the environment after torch_threads: it records the threads this run uses
        record = RunRecord(record_dir, {**header, "threads": threads, "environment": environment(device)},
                           reserve_bytes=reserve)
        failure: Optional[BaseException] = None
        try:
            _generate_into(record, run_cfg, source, plan, job_batches, run_dir, prepared.references)
        except BaseException as exc:
            record.finish("interrupted" if interrupt_of(exc) else "failed", error=failure_message(exc))
            log.info("run ended: %s", record.data["error"])
            # the traceback would keep the loaded pipeline (a local of a finished frame) alive for as long as
            # the exception lives: in a multirun Hydra keeps it with the job's result, GPU memory included
            traceback.clear_frames(exc.__traceback__)
            failure = exc
        finally:
            end_of_job_cleanup(device)  # the pipeline is gone; the next job of a sweep starts as a fresh process
        if world is not None:
            failure = _merge_ranks(record, run_dir, world, failure, plan.splits_each_image)
        if failure is None and prepared.references is not None and (world is None or world.rank == 0):
            _measure_quality(record, prepared, run_cfg.batch_size, run_dir, world)
        if failure is not None:
            raise failure
    record.finish("ok")
    log.info("run ok: %d images, record %s", len(record.data["images"]), record.path)
    return record.data


def _measure_quality(record: RunRecord, prepared: Prepared, batch_size: int, run_dir: Path,
                     world: Optional[World]) -> None:
    """run.json's `quality`: every image of the run (all ranks') against its reference. A measurement that
    fails is recorded as such; the run and its images stand."""
    worlds = [world] if world is None or prepared.plan.splits_each_image else [
        World(rank, world.size, rank) for rank in range(world.size)]
    files: dict = {}
    for each in worlds:
        files.update(reference_files(prepared.references.folder,
                                     _batches_of(prepared.jobs, prepared.plan, each, batch_size)))
    try:
        measured = reference_quality(run_dir, prepared.jobs, files, record.data.get("references"))
    except Exception as exc:  # noqa: BLE001 - the images are made; say why their quality is missing
        log.warning("quality against the references could not be measured: %s", failure_message(exc))
        measured = {"against": "reference", "error": failure_message(exc)}
    record.update(quality=measured)
    if measured.get("quality_pairs"):
        log.info("quality against the references (%d images): PSNR %s dB, SSIM %s", measured["quality_pairs"],
                 _shown(measured["psnr_db"]), _shown(measured["ssim"]))


def _shown(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _hold_run_folder(held: contextlib.ExitStack, run_dir: Path, run_cfg: Any, world: Optional[World]) -> Path:
    """Own the run folder (rank 0 alone under torchrun, the others wait for its verdict before writing);
    returns where this process keeps its run.json."""
    if world is None:
        held.enter_context(own_run_folder(run_dir, run_cfg.resume, run_cfg.overwrite))
        return run_dir
    refusal = None
    if world.rank == 0:
        try:
            held.enter_context(own_run_folder(run_dir, run_cfg.resume, run_cfg.overwrite))
        except DiffgentorError as exc:
            refusal = exc
    verdict = agree(str(refusal) if refusal else None)[0]
    if refusal is not None:
        raise refusal
    if verdict is not None:
        raise FolderInUseError(verdict)
    if world.rank == 0:
        return run_dir
    own = rank_folder(run_dir, world.rank)
    own.mkdir(parents=True, exist_ok=True)
    return own


def _merge_ranks(record: RunRecord, run_dir: Path, world: World, failure: Optional[BaseException],
                 shared_images: bool) -> Optional[BaseException]:
    """Every rank reports (ok or not) to all; rank 0 writes the merged run.json (`shared_images`: every
    rank took part in every image, context parallelism). Returns the failure this process ends with: its own,
    or on rank 0 the first other rank's.

    Under context parallelism a failed rank leaves at once (its peers wait in a collective it will never
    join; its leaving breaks that collective), and rank 0 reads the other ranks' records from disk."""
    records = None
    if not (shared_images and failure is not None):
        try:
            records = agree(record.data)
        except RuntimeError as exc:  # a peer left (context parallelism: it failed)
            failure = failure or exc
            if failure is exc:
                record.finish("failed", error=failure_message(exc))
    if world.rank != 0:
        return failure
    records = records or [record.data, *records_on_disk(run_dir, world)]
    record.update(**merge_records(records, shared_images))
    failed = [(rank, r) for rank, r in enumerate(records) if rank and r.get("status") not in ("running", "ok")]
    if failed:
        rank, other = failed[0]
        cause = f"rank {rank} of {world.size}: {other.get('error')}"
        if failure is not None:  # rank 0 failed too (under context parallelism: because rank `rank` left)
            cause += f" (rank 0: {record.data.get('error')})"
        status = record.data["status"] if failure is not None else other.get("status")
        record.finish(status, error=cause)
        if failure is None or not interrupt_of(failure):  # an interrupt keeps its exit code
            failure = DiffgentorError(cause)
    elif failure is not None:
        record.finish(record.data["status"], error=record.data.get("error"))
    return failure


def warmup_passes(requested: int, plan: Plan) -> tuple[int, Optional[str]]:
    """`benchmark.warmup`, raised to COMPILED_CACHE_WARMUP where compile and a cache meet, with the warning
    that says so (else None): one warmup generation leaves paths that a timed call would compile. 0 stays 0
    (the user asked to time the compiling calls)."""
    compiled = any(step.name == "compile" for step in plan.steps)
    cached = any(step.optimizer.stage == "cache" for step in plan.steps)
    if not (0 < requested < COMPILED_CACHE_WARMUP and compiled and cached):
        return requested, None
    return COMPILED_CACHE_WARMUP, (
        f"benchmark.warmup={requested} raised to {COMPILED_CACHE_WARMUP}: with torch.compile and a cache the "
        "first generation creates the cache's state, and paths only later generations take would compile "
        "inside a timed call")


def _generate_into(record: RunRecord, run_cfg: Any, source: Any, plan: Plan, job_batches: list,
                   run_dir: Path, references: Optional[ReferencePlan]) -> None:
    """Load (or take the sweep's kept pipeline), apply, generate, record; a failure drops the kept one."""
    key, reuse_reason = reuse_key(run_cfg, source, plan)
    try:
        _load_and_generate(record, run_cfg, source, plan, job_batches, run_dir, key, reuse_reason, references)
    except BaseException:
        if key is not None:
            LOADED.drop(key, "the previous job with these weights failed: loaded afresh")
        raise


def reuse_key(run_cfg: Any, source: ModelSource, plan: Plan) -> tuple[Optional[ModelKey], str]:
    """The key this job's pipeline is kept under for the next job of an in-process sweep, or None and why
    it will not be (loaded_models.py)."""
    if not run_cfg.reuse_model:
        return None, "reuse_model=false"
    if not in_process_multirun():
        return None, "not a multirun of Hydra's basic launcher: no later job runs in this process"
    if plan.offloads:
        return None, "an offloaded pipeline is never reused (its hooks place weights on other devices)"
    model = run_cfg.model
    return ModelKey(source.location, model.revision, model.variant, str(plan.target.dtype),
                    plan.target.device), ""


def keep_for_next_job(applied: AppliedOptimizations, pipe: Any, key: ModelKey) -> None:
    """Remove every optimization the job applied and keep the pipeline; one that cannot be removed exactly
    drops it instead (the next job loads afresh and says why)."""
    try:
        applied.remove(pipe)
    except NotImplementedError as exc:
        LOADED.drop(key, f"the previous job with these weights applied what cannot be undone exactly ({exc}): "
                         "loaded afresh")
        return
    LOADED.keep(key, pipe)


def _load_and_generate(record: RunRecord, run_cfg: Any, source: Any, plan: Plan, job_batches: list,
                       run_dir: Path, key: Optional[ModelKey], reuse_reason: str,
                       references: Optional[ReferencePlan]) -> None:
    device, dtype = plan.target.device, plan.target.dtype
    start = time.perf_counter()
    pipe = None
    if key is not None:
        pipe, reuse_reason = LOADED.take(key, run_cfg.reuse_model_max)
    record.update(model_reused=pipe is not None, model_reuse_reason=reuse_reason)
    if pipe is None:
        with no_loading_bars():
            pipe = load_pipeline(source, run_cfg.model, dtype)
        if not plan.offloads:
            pipe.to(device)
    load_s = time.perf_counter() - start
    log.info("%s %s as %s in %.2f s", "reused" if record.data["model_reused"] else "loaded", type(pipe).__name__,
             str(dtype).replace("torch.", ""), load_s)
    check_size(pipe, source.family, run_cfg.height, run_cfg.width)
    passed = pass_through_kwargs(run_cfg, type(pipe).__name__, call_parameters(type(pipe).__name__))
    pipe.set_progress_bar_config(disable=not (run_cfg.progress and run_cfg.progress_steps), leave=False)
    warmup, raised = warmup_passes(run_cfg.benchmark.warmup, plan)
    if raised:
        log.warning(raised)
        record.update(warnings=[*record.data.get("warnings", []), raised])
    settings = GenerationSettings(
        steps=run_cfg.steps, guidance_scale=run_cfg.guidance_scale, height=run_cfg.height,
        width=run_cfg.width, device=device, warmup=warmup,
        repeats=run_cfg.benchmark.repeats, min_timed_calls=run_cfg.benchmark.min_timed_calls,
        extra_kwargs={**run_cfg.model.call_kwargs, **passed},
        compiled=any(step.name == "compile" for step in plan.steps),
    )
    if references is not None:  # before the plan: the pipeline as loaded, nothing applied; untimed
        made = make_references(pipe, job_batches, settings, references.folder, references.key)
        record.update(references=made.to_json())
        log.info("references: %d made in %.2f s, %d cached (%s)", made.generated, made.seconds, made.reused,
                 made.folder)

    start = time.perf_counter()
    with apply_plan(plan, pipe) as applied:  # released on exit: the next job of a sweep starts clean
        optimize_s = time.perf_counter() - start
        if applied.records:
            log.info("applied %s in %.2f s", ", ".join(r.name for r in applied.records), optimize_s)
        record.update(timings={"load_s": load_s, "optimize_s": optimize_s}, dtype=str(dtype).replace("torch.", ""))
        images_dir = run_dir / IMAGES_DIR
        world = current_world()
        # context parallelism: every rank makes every image, rank 0 keeps them
        writes_images = world is None or world.rank == 0 or not plan.splits_each_image

        first_images: list = []

        def keep(batch: list, images: list, latency_s: float) -> None:
            if not first_images:
                first_images.extend(images)
            if not writes_images:
                return
            for job, image in zip(batch, images):
                file = save_image(image, images_dir, job.index, job.prompt, job.seed, source.model_id)
                record.data["images"].append(
                    {"file": file, "prompt": job.prompt, "seed": job.seed, "latency_s": latency_s})
            record.save()

        total = sum(len(b) for b in job_batches)
        with tqdm(total=total, desc="images", unit="img", disable=not run_cfg.progress) as bar:
            timings = generate(pipe, job_batches, settings, keep, progress=bar,
                               before_timed=lambda: applied.before_timed_calls(pipe))
        evidence_run = _evidence_pass(pipe, applied, job_batches[0], settings, first_images) if job_batches else None
        optimizations = applied.evidence(pipe)
        latency = timings.summary(settings.steps)["latency_s"]
        if latency:
            log.info("timed %d calls: median %.4f s (min %.4f, max %.4f)", latency["n"], latency["median"],
                     latency["min"], latency["max"])
        record.update(
            timings={"load_s": load_s, "optimize_s": optimize_s, **timings.summary(settings.steps),
                     "warmup_passes": settings.warmup, "repeats": timings.repeats},
            memory=peak_memory(device),
            optimizations=optimizations,
            **({"evidence_pass": evidence_run} if evidence_run else {}),
        )
        if key is not None:
            keep_for_next_job(applied, pipe, key)


def _evidence_pass(pipe: Any, applied: AppliedOptimizations, batch: list, settings: GenerationSettings,
                   timed_images: list) -> Optional[dict]:
    """After the timed calls, the first batch once more with the optimizers' instruments attached (caches
    count the compute their blocks ran), so that the timed calls carry none. None: nobody needs one."""
    if not needs_evidence_pass(applied.plan):
        return None
    with applied.evidence_pass(pipe):
        images, seconds = run_batch(pipe, batch, settings)
    identical = len(images) == len(timed_images) and all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(images, timed_images))
    return {"what": "the first batch once more, untimed, with the evidence instruments attached; compiled "
                    "modules run eager in it", "images": len(images), "seconds": seconds,
            "images_identical_to_timed": identical}
