"""Reference images (`+quality=reference`): what the run's prompts and seeds give with no optimization applied,
so that any run, not only a sweep with a baseline job, says what its optimizations cost in quality.

The references are made by the loaded pipeline before the plan is applied (same dtype, device, steps, size,
call arguments and batches as the run: only the optimizations differ), untimed, and cached on disk: one
folder per everything that determines them except the prompts (model and its weight files, dtype, device
type, steps, guidance, size, call arguments, batch size, library versions), one PNG per prompt, negative
prompt and seed (and batch, when a batch holds several images). A sweep or a tuning study over one model
makes each reference once; an offloaded run, which cannot hold the unoptimized pipeline on its device, uses
references an earlier run made.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from diffgentor.prompts import ImageJob
from diffgentor.resume import digest

#: Written in each reference folder: what its references were made with (the key, readable).
KEY_FILE = "reference.json"


def _weights_fingerprint(location: str, is_local: bool) -> Any:
    """A local folder's files (path, size, modification time): weights changed in place make new references.
    A hub id is named with its revision instead."""
    if not is_local:
        return None
    folder = Path(location)
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".json"))


def reference_key(run_cfg: Any, source: Any, dtype: Any, device: str, call_kwargs: dict) -> dict:
    """Everything the references depend on besides the prompts and seeds."""
    from importlib import metadata

    model = run_cfg.model
    return {
        "model": source.location, "revision": model.revision, "variant": model.variant,
        "pipeline_class": source.pipeline_class,
        "weights": _weights_fingerprint(source.location, source.is_local),
        "dtype": str(dtype).replace("torch.", ""), "device_type": device.split(":")[0],
        "steps": run_cfg.steps, "guidance_scale": run_cfg.guidance_scale, "height": run_cfg.height,
        "width": run_cfg.width, "call_kwargs": call_kwargs, "batch_size": run_cfg.batch_size,
        "versions": {name: metadata.version(name) for name in ("torch", "diffusers", "transformers")},
    }


def reference_folder(run_cfg: Any, key: dict) -> Path:
    root = run_cfg.quality.dir or str(Path(run_cfg.cache_dir).expanduser() / "references")
    return Path(root).expanduser() / digest(key)


def reference_files(folder: Path, job_batches: list[list[ImageJob]]) -> dict[int, Path]:
    """Image job index -> its reference PNG (there or not yet)."""
    files = {}
    for batch in job_batches:
        company = digest([(j.prompt, j.negative_prompt, j.seed) for j in batch]) if len(batch) > 1 else ""
        for job in batch:
            files[job.index] = folder / f"{digest([job.prompt, job.negative_prompt, job.seed, company])}.png"
    return files


@dataclass
class References:
    folder: Path
    files: dict[int, Path]
    generated: int = 0
    reused: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"folder": str(self.folder), "generated": self.generated, "reused": self.reused,
                "seconds": self.seconds}


def missing_references(folder: Path, job_batches: list[list[ImageJob]]) -> int:
    """How many of these images have no reference yet (before load: an offloaded run cannot make them)."""
    return sum(not path.is_file() for path in reference_files(folder, job_batches).values())


def make_references(pipe: Any, job_batches: list[list[ImageJob]], settings: Any, folder: Path,
                    key: dict) -> References:
    """Generate the batches whose references are not cached yet with `pipe` as loaded (no optimization
    applied), untimed; each PNG is written atomically, so ranks or jobs making the same one do not clash."""
    from diffgentor.generate import run_batch
    from diffgentor.record import replaced_atomically, write_json_atomic

    files = reference_files(folder, job_batches)
    references = References(folder, files)
    start = time.perf_counter()
    for batch in job_batches:
        if all(files[job.index].is_file() for job in batch):
            references.reused += len(batch)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        images, _ = run_batch(pipe, batch, settings)
        for job, image in zip(batch, images):
            with replaced_atomically(files[job.index]) as handle:
                image.save(handle, format="PNG")
        references.generated += len(batch)
    if references.generated:
        write_json_atomic(folder / KEY_FILE, key)
    references.seconds = time.perf_counter() - start
    return references


def reference_quality(run_dir: Path, jobs: list[ImageJob], files: dict[int, Path],
                      made: Optional[dict] = None) -> dict:
    """run.json's `quality`: PSNR (pooled), SSIM and LPIPS (means) of the run's images against their
    references, and per image; pairs with a side missing are left out and counted."""
    from diffgentor.image_quality import Lpips, per_image_quality, quality, read_pixels
    from diffgentor.record import IMAGES_DIR, image_filename

    names = {job.index: f"{IMAGES_DIR}/{image_filename(job.index, job.prompt)}" for job in jobs}
    ours = {index: read_pixels(run_dir / name) for index, name in names.items()}
    theirs = {index: read_pixels(files[index]) for index in names if index in files}
    lpips = Lpips()
    pooled = quality(ours, theirs, lpips)
    each = per_image_quality(ours, theirs)
    return {"against": "reference", **pooled, "lpips_note": lpips.note,
            "images_missing": len(names) - pooled["quality_pairs"],
            **({"references": made} if made else {}),
            "per_image": [{"file": names[index], **values} for index, values in sorted(each.items())]}


@dataclass(frozen=True)
class ReferencePlan:
    """Where this run's references are and what determines them, known before load."""

    folder: Path
    key: dict


def wants_references(run_cfg: Any) -> bool:
    return getattr(getattr(run_cfg, "quality", None), "name", "none") == "reference"


def plan_references(run_cfg: Any, source: Any, dtype: Any, device: str, call_kwargs: dict,
                    job_batches: list[list[ImageJob]], offloaded: bool) -> tuple[ReferencePlan, list[str]]:
    """The run's reference folder, and what refuses it before load: torchmetrics missing, or an offloaded run
    whose references are not all cached (it cannot hold the unoptimized pipeline on its device)."""
    import importlib.util

    key = reference_key(run_cfg, source, dtype, device, call_kwargs)
    planned = ReferencePlan(reference_folder(run_cfg, key), key)
    problems = []
    if importlib.util.find_spec("torchmetrics") is None:
        problems.append("quality=reference measures with torchmetrics, which is not installed: "
                        "pip install 'diffgentor[metrics]'")
    missing = missing_references(planned.folder, job_batches)
    if offloaded and missing:
        problems.append(f"quality=reference: {missing} reference images are not cached yet, and an offloaded run "
                        "cannot make them (they need the pipeline without optimizations on its device); make "
                        "them with the same run without +memory offload first (they are cached), or drop +quality")
    return planned, problems
