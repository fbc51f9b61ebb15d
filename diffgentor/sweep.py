"""A sweep's summary, built from its jobs' run.json files alone (so it can be rebuilt after a crash).

In the sweep folder: summary.csv / summary.json (one row per job), summary.md (the same as a table, the
baseline and the failures spelled out), pareto.png (speedup vs PSNR, Pareto front marked) and grid.png
(prompts x configurations). Quality is measured against the baseline job's image for the same prompt and
seed, with torchmetrics: PSNR (pooled over the job's images) and SSIM (mean) always, LPIPS where its weights
are on this machine. Speedup = the baseline's median latency per image / the job's, with its range from the
latencies' spread (the baseline's min / the job's max to the baseline's max / the job's min). A speedup whose
latency range overlaps the baseline's is within noise; it, a speedup measured without a spread, and a job
whose caches skipped nothing are never starred on the Pareto front.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from diffgentor.errors import DiffgentorError, MissingPackageError
from diffgentor.record import RUN_FILE, write_json_atomic
from diffgentor.resume import VOLATILE_KEYS, config_hash, load_record

SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD = "summary.csv", "summary.json", "summary.md"
PARETO_PNG, GRID_PNG = "pareto.png", "grid.png"
#: One row per job, in this order (csv header, json keys, and what summary.md shows a selection of).
COLUMNS = ("job", "label", "status", "latency_median_s", "latency_min_s", "latency_max_s", "latency_n",
           "speedup", "speedup_min", "speedup_max", "noise", "compute_fraction", "peak_bytes", "memory_kind",
           "psnr_db", "ssim", "lpips", "identical", "quality_pairs", "images_missing", "pareto",
           "load_s", "optimize_s", "warmup_s", "overrides", "error", "folder", "config_hash")
#: grid.png shows at most this many prompt/seed rows (the first ones of the baseline).
GRID_MAX_ROWS = 8
NA = "n/a"
#: The `noise` column: how a job's speedup stands against the spread of the two latencies it divides.
BEYOND_NOISE, WITHIN_NOISE, NO_SPREAD = "beyond noise", "within noise", "no spread"


class SweepError(DiffgentorError):
    """The folder holds no sweep to summarise, or the summary cannot choose what was asked."""


@dataclass
class Job:
    """One job folder of the sweep and its run.json."""

    num: int
    folder: Path
    record: dict
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    @property
    def overrides(self) -> list[str]:
        return [str(o) for o in self.record.get("overrides", [])]

    def latency_per_image_s(self, statistic: str = "median") -> Optional[float]:
        """Latency of one pipeline call (its median, min or max over the timed calls) divided by the images one
        call makes (batch_size)."""
        latency = (self.record.get("timings") or {}).get("latency_s") or {}
        batch = (self.record.get("config") or {}).get("batch_size") or 1
        value = latency.get(statistic)
        return value / batch if isinstance(value, (int, float)) and value > 0 else None

    @property
    def timed_calls(self) -> int:
        return int(((self.record.get("timings") or {}).get("latency_s") or {}).get("n") or 0)


# ------------------------------------------------------------------------------------------------ jobs

def _job_number(folder: Path, fallback: int) -> int:
    """hydra.job.num from the job's .hydra/hydra.yaml; else the folder's leading number; else its order."""
    num = _yaml_path(folder / ".hydra" / "hydra.yaml", "hydra", "job", "num")
    if isinstance(num, int):
        return num
    match = re.match(r"(\d+)[-_]", folder.name)
    return int(match.group(1)) if match else fallback


def _yaml_path(path: Path, *keys: str) -> Any:
    """The value at `keys` in a YAML file; None when the file, or any key on the way, is missing or bad."""
    import yaml

    try:
        value: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _label_parts(job: Job) -> list[str]:
    """The overrides that say what the job computes (no '+', no volatile keys such as cache_dir)."""
    parts = []
    for override in job.overrides:
        key = _override_key(override)
        if key.split(".")[0] in VOLATILE_KEYS or key.startswith("hydra."):
            continue
        parts.append(override.lstrip("+"))
    return parts


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir` holding a run.json, by job number, labelled by what varies."""
    jobs = []
    for order, path in enumerate(sorted(sweep_dir.rglob(RUN_FILE))):
        record, unreadable = load_record(path.parent)
        if record is None:  # a corrupt or foreign record is a failed row saying why, never a crash
            record = {"status": "failed", "error": unreadable or f"unreadable {RUN_FILE}"}
        jobs.append(Job(_job_number(path.parent, order), path.parent, record))
    if not jobs:
        raise SweepError(f"no {RUN_FILE} under {sweep_dir}: give the folder of a sweep "
                         "(`python -m diffgentor -m ...` writes multirun/<date>/<time>)")
    jobs.sort(key=lambda job: (job.num, str(job.folder)))
    parts = [_label_parts(job) for job in jobs]
    common = set.intersection(*(set(p) for p in parts)) if len(jobs) > 1 else set()
    for job, job_parts in zip(jobs, parts):
        job.label = " ".join(p for p in job_parts if p not in common) or f"job {job.num}"
    return jobs


# ------------------------------------------------------------------------------------------------ baseline

def _is_unoptimized(job: Job) -> bool:
    """Nothing recorded but precision settings (TF32 flags), which every run records."""
    from diffgentor.optimize.registry import load_all

    optimizers = load_all()
    return all(getattr(optimizers.get(o.get("name")), "stage", None) == "precision"
               for o in job.record.get("optimizations", []))


def _matches(job: Job, wanted: str) -> bool:
    if wanted.isdigit():
        return job.num == int(wanted)
    if wanted == job.folder.name:
        return True
    items = {item.strip().lstrip("+") for item in wanted.split(",") if item.strip()}
    return bool(items) and items <= {o.lstrip("+") for o in job.overrides}


def choose_baseline(jobs: list[Job], wanted: Optional[str]) -> tuple[Optional[Job], str]:
    """The baseline job and a sentence saying which and why; SweepError when `wanted` picks no single job."""
    if wanted is not None and str(wanted).strip():
        wanted = str(wanted).strip()
        found = [job for job in jobs if _matches(job, wanted)]
        if len(found) != 1:
            which = f"jobs {', '.join(str(j.num) for j in found)}" if found else "no job"
            raise SweepError(
                f"sweep.baseline={wanted!r} matches {which} of {len(jobs)}: give a job number "
                f"(0-{max(j.num for j in jobs)}), a job folder name, or overrides that only one job has, "
                "quoted, e.g. 'sweep.baseline=\"+cache=none\"'")
        job = found[0]
        return job, f"job {job.num} ({job.label}), chosen with sweep.baseline={wanted}"
    candidates = [job for job in jobs if job.ok and _is_unoptimized(job)]
    if not candidates:
        return None, ("no baseline: no successful job ran without optimizations; add one to the sweep "
                      "(e.g. +cache=none,...) or pick one with sweep.baseline=JOB_NUMBER")
    # fp32 first: a bf16 job is itself a speed/quality trade-off.
    candidates.sort(key=lambda j: (j.record.get("dtype") not in (None, "float32"), j.num))
    job = candidates[0]
    note = f"job {job.num} ({job.label}): the job with no optimizations"
    if len(candidates) > 1:
        others = ", ".join(str(j.num) for j in candidates[1:])
        note += f" (the first of several: {others} too; pick one with sweep.baseline=JOB_NUMBER)"
    return job, note


# ------------------------------------------------------------------------------------------------ quality

def _image_keys(job: Job) -> dict[tuple, Path]:
    """(prompt, seed, n-th occurrence) -> image path, for the images the job finished."""
    keys: dict[tuple, Path] = {}
    for image in job.record.get("images", []):
        base = (image.get("prompt"), image.get("seed"))
        occurrence = sum(1 for key in keys if key[:2] == base)
        keys[(*base, occurrence)] = job.folder / image["file"]
    return keys


def _pixels(path: Path) -> Any:
    """The image as an RGB uint8 array, or None when it is missing or not a readable image."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):  # missing, truncated, not an image
        return None


def decoded_images(job: Job) -> dict[tuple, Any]:
    """(prompt, seed, n-th occurrence) -> the job's image as an RGB array, decoded once for the whole
    summary; None for a listed image that is gone or unreadable (counted as images_missing)."""
    return {key: _pixels(path) for key, path in _image_keys(job).items()}


def _stack(arrays: list) -> Any:
    """uint8 tensor (N, 3, H, W)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class Lpips:
    """LPIPS (torchmetrics, AlexNet) when torchvision and the backbone weights are on this machine; the
    reason otherwise. Nothing is downloaded: the weights must already be in the torch hub cache."""

    def __init__(self) -> None:
        self.metric: Any = None
        try:
            import torch
            import torchvision
        except ImportError:
            self.note = "n/a: LPIPS needs torchvision, which is not installed"
            return
        weights = torchvision.models.AlexNet_Weights.DEFAULT
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not local.is_file():
            self.note = f"n/a: the LPIPS backbone weights are not on this machine ({local})"
            return
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        self.note = "LPIPS: torchmetrics LearnedPerceptualImagePatchSimilarity (AlexNet), mean over images"

    def __call__(self, preds: Any, target: Any) -> Optional[float]:
        if self.metric is None:
            return None
        self.metric.reset()
        return float(self.metric(preds.float() / 255, target.float() / 255))


def quality(ours: dict[tuple, Any], theirs: dict[tuple, Any], lpips: Lpips) -> dict:
    """PSNR (dB, pooled MSE over all matched images), SSIM and LPIPS (means) of a job's images (`ours`, from
    decoded_images) against the baseline's (`theirs`) for the same prompt and seed; `identical`: every matched
    image equal to the baseline's, pixel for pixel. Pairs with a missing side are left out (images_missing)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    empty = {"psnr_db": None, "ssim": None, "lpips": None, "identical": None, "quality_pairs": 0}
    pairs = [(ours[key], theirs[key]) for key in theirs
             if ours.get(key) is not None and theirs[key] is not None]
    if not pairs or any(a.shape != b.shape for a, b in pairs) or len({a.shape for a, _ in pairs}) > 1:
        return empty
    preds, target = _stack([a for a, _ in pairs]), _stack([b for _, b in pairs])
    p, t = preds.float() / 255, target.float() / 255
    return {
        "psnr_db": float(peak_signal_noise_ratio(p, t, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=1.0)),
        "lpips": lpips(preds, target),
        "identical": bool((preds == target).all()),
        "quality_pairs": len(pairs),
    }


# ------------------------------------------------------------------------------------------------ rows

def _compute_fraction(record: dict) -> Optional[float]:
    """Product of the compute fractions the optimizers measured (cache optimizers report one)."""
    fractions = [o["evidence"]["compute_fraction"] for o in record.get("optimizations", [])
                 if isinstance(o.get("evidence"), dict) and o["evidence"].get("compute_fraction") is not None]
    return math.prod(fractions) if fractions else None


def pareto_front(points: dict[int, tuple[float, float]]) -> set[int]:
    """Jobs no other job beats on both speedup and quality (higher is better for both)."""
    front = set()
    for job, (speed, qual) in points.items():
        dominated = any(s >= speed and q >= qual and (s > speed or q > qual)
                        for other, (s, q) in points.items() if other != job)
        if not dominated:
            front.add(job)
    return front


def speedup_against(job: Job, baseline: Job) -> dict:
    """The job's speedup over the baseline, its range from both latencies' spreads, and whether it stands
    beyond that noise (both timed more than once, and the latency ranges do not overlap)."""
    median, base = job.latency_per_image_s(), baseline.latency_per_image_s()
    if not (job.ok and baseline.ok and median and base):
        return {"speedup": None, "speedup_min": None, "speedup_max": None, "noise": None}
    lo, hi = job.latency_per_image_s("min"), job.latency_per_image_s("max")
    base_lo, base_hi = baseline.latency_per_image_s("min"), baseline.latency_per_image_s("max")
    if None in (lo, hi, base_lo, base_hi):
        return {"speedup": base / median, "speedup_min": None, "speedup_max": None, "noise": NO_SPREAD}
    low, high = base_lo / hi, base_hi / lo
    if job is not baseline and min(job.timed_calls, baseline.timed_calls) < 2:
        noise = NO_SPREAD
    else:
        noise = WITHIN_NOISE if low <= 1.0 <= high else BEYOND_NOISE
    return {"speedup": base / median, "speedup_min": low, "speedup_max": high, "noise": noise}


def _skipped_nothing(row: dict) -> bool:
    return row["compute_fraction"] is not None and row["compute_fraction"] >= 1.0 - 1e-9


def pareto_eligible(row: dict, baseline: Optional[int]) -> bool:
    """The baseline, and jobs whose speedup stands beyond noise and that skipped something if they cache."""
    return row["job"] == baseline or (row["noise"] == BEYOND_NOISE and not _skipped_nothing(row))


def build_rows(jobs: list[Job], baseline: Optional[Job], lpips: Lpips) -> list[dict]:
    base_ok = baseline is not None and baseline.ok
    base_pixels = decoded_images(baseline) if base_ok else None
    rows = []
    for job in jobs:
        pixels = base_pixels if job is baseline and base_pixels is not None else decoded_images(job)
        record, timings = job.record, job.record.get("timings") or {}
        latency = timings.get("latency_s") or {}
        row = {
            "job": job.num, "label": job.label, "status": record.get("status", "unknown"),
            "latency_median_s": latency.get("median"), "latency_min_s": latency.get("min"),
            "latency_max_s": latency.get("max"), "latency_n": latency.get("n"),
            **(speedup_against(job, baseline) if base_ok else
               {"speedup": None, "speedup_min": None, "speedup_max": None, "noise": None}),
            "compute_fraction": _compute_fraction(record),
            "peak_bytes": (record.get("memory") or {}).get("peak_bytes"),
            "memory_kind": (record.get("memory") or {}).get("kind"),
            "pareto": False,
            "load_s": timings.get("load_s"), "optimize_s": timings.get("optimize_s"),
            "warmup_s": timings.get("warmup_s"),
            "overrides": " ".join(job.overrides), "error": record.get("error"),
            "folder": job.folder.name,
            "config_hash": config_hash(record["config"]) if isinstance(record.get("config"), dict) else None,
        }
        row["images_missing"] = sum(image is None for image in pixels.values())
        if job.ok and base_pixels is not None:
            row.update(quality(pixels, base_pixels, lpips))
        else:
            row.update(psnr_db=None, ssim=None, lpips=None, identical=None, quality_pairs=0)
        rows.append({column: row[column] for column in COLUMNS})
    base_num = baseline.num if base_ok else None
    points = {r["job"]: (r["speedup"], r["psnr_db"]) for r in rows
              if r["speedup"] is not None and r["psnr_db"] is not None and pareto_eligible(r, base_num)}
    front = pareto_front(points)
    for row in rows:
        row["pareto"] = row["job"] in front
    return rows


def _grouped(values: dict[int, Any]) -> str:
    """'warmup 0: jobs 1, 3; warmup 1: jobs 0, 2' style listing of which job has which value."""
    by_value: dict[str, list[int]] = {}
    for job, value in values.items():
        by_value.setdefault(str(value), []).append(job)
    return "; ".join(f"{value}: job{'s' * (len(nums) > 1)} {', '.join(map(str, nums))}"
                     for value, nums in by_value.items())


def timing_notes(jobs: list[Job], rows: list[dict]) -> list[str]:
    """What makes the jobs' latencies compare less well than they look: different warmups, no warmup,
    machines or sessions (a resume), a spread too small to judge, a cache that skipped nothing."""
    timed = [job for job in jobs if job.ok and job.latency_per_image_s()]
    notes = []

    def differing(value: Callable[[Job], Any]) -> dict[int, Any]:
        values = {job.num: value(job) for job in timed}
        return values if len(set(map(str, values.values()))) > 1 else {}

    def environment(key: str) -> Callable[[Job], Any]:
        return lambda job: (job.record.get("environment") or {}).get(key)

    warmups = differing(lambda j: (j.record.get("timings") or {}).get("warmup_passes"))
    if warmups:
        notes.append(f"jobs were timed after different warmups ({_grouped(warmups)}): their speedups mix "
                     "one-time costs with steady state")
    cold = [job.num for job in timed if (job.record.get("timings") or {}).get("warmup_passes") == 0]
    if cold:
        notes.append(f"job{'s' * (len(cold) > 1)} {', '.join(map(str, cold))} timed with benchmark.warmup=0: "
                     "the first timed call includes one-time costs (lazy init, kernel selection, compile)")
    for key, what in (("host", "machines"), ("device_name", "devices")):
        values = differing(environment(key))
        if values:
            notes.append(f"jobs ran on different {what} ({_grouped(values)}): speedups compare machines too")
    sessions = differing(environment("session"))
    if sessions:
        notes.append(f"jobs were timed in {len(set(sessions.values()))} sessions (a resume, or separate "
                     f"invocations): the machine's load may differ between them ({_grouped(sessions)})")
    spread_less = [row["job"] for row in rows if row["noise"] == NO_SPREAD]
    if spread_less:
        notes.append(f"job{'s' * (len(spread_less) > 1)} {', '.join(map(str, spread_less))}: one timed call, no "
                     "spread, so the speedup cannot be told from noise (raise benchmark.min_timed_calls)")
    idle = [row["job"] for row in rows if _skipped_nothing(row)]
    if idle:
        notes.append(f"job{'s' * (len(idle) > 1)} {', '.join(map(str, idle))}: the cache skipped nothing "
                     "(compute fraction 1), so any speedup there is not the cache's; never starred")
    return notes


# ------------------------------------------------------------------------------------------------ files

@dataclass
class Summary:
    sweep_dir: Path
    rows: list[dict]
    baseline: Optional[int]
    baseline_note: str
    lpips_note: str
    #: A sweep.baseline that picks no single job: the summary is written without a baseline, and this says why.
    baseline_error: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [row for row in self.rows if row["status"] != "ok"]

    def describe(self) -> str:
        missing = sum(row["images_missing"] for row in self.rows)
        return (f"{len(self.rows)} jobs, {len(self.failed)} failed"
                + (f", {missing} listed images missing or unreadable" if missing else "")
                + f"; baseline: {self.baseline_note}; "
                f"wrote {', '.join((SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, PARETO_PNG, GRID_PNG))}")

    def to_json(self) -> dict:
        return {"sweep_dir": str(self.sweep_dir), "jobs": len(self.rows), "failed": len(self.failed),
                "images_missing": sum(row["images_missing"] for row in self.rows),
                "baseline": {"job": self.baseline, "note": self.baseline_note, "error": self.baseline_error},
                "metrics": {"psnr_db": "torchmetrics peak_signal_noise_ratio, data_range 1, pooled over the "
                                       "images with the same prompt and seed as the baseline's",
                            "ssim": "torchmetrics structural_similarity_index_measure, data_range 1, mean",
                            "lpips": self.lpips_note},
                "notes": self.notes, "columns": list(COLUMNS), "rows": self.rows}


def _cell(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return NA if value is None else f"{value:{spec}}{suffix}"


def _psnr_text(row: dict) -> str:
    if row["psnr_db"] is None:
        return NA
    return "inf (identical)" if math.isinf(row["psnr_db"]) else f"{row['psnr_db']:.2f}"


def _latency_text(row: dict) -> str:
    text = _fmt(row["latency_median_s"], ".4f")
    if row["latency_min_s"] is not None and row["latency_max_s"] is not None:
        text += f" [{row['latency_min_s']:.4f}, {row['latency_max_s']:.4f}]"
    return text


def _speedup_text(row: dict, baseline: Optional[int]) -> str:
    """'2.43x [2.1, 2.8]', '1.09x (within noise)', '2.90x (no spread)'; the baseline is 1.00x."""
    if row["speedup"] is None:
        return NA
    text = f"{row['speedup']:.2f}x"
    if row["job"] == baseline:
        return text
    if row["speedup_min"] is not None and row["noise"] == BEYOND_NOISE:
        return f"{text} [{row['speedup_min']:.2f}, {row['speedup_max']:.2f}]"
    return f"{text} ({row['noise']})"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _write_md(path: Path, summary: Summary) -> None:
    lines = [f"# Sweep summary: {summary.sweep_dir}", "",
             f"- jobs: {len(summary.rows)}, failed: {len(summary.failed)}",
             f"- baseline: {summary.baseline_note}"]
    if summary.baseline_error:
        lines.append(f"- error: {summary.baseline_error}")
    lines += ["- latency: median [min, max] per pipeline call over the timed calls; speedup: the baseline's "
              "median latency per image / the job's, [range] from the two latencies' spreads; *within noise* "
              "when the job's latency range overlaps the baseline's (never starred)",
              "- quality vs the baseline's image for the same prompt and seed (torchmetrics): PSNR pooled "
              "over the images, SSIM mean; " + summary.lpips_note,
              *(f"- {note}" for note in summary.notes), "",
              "| job | configuration | status | latency (s) | speedup | compute fraction | peak memory (MiB) "
              "| PSNR (dB) | SSIM | LPIPS | Pareto |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    for row in summary.rows:
        label = row["label"] + (" **(baseline)**" if row["job"] == summary.baseline else "")
        memory = None if row["peak_bytes"] is None else row["peak_bytes"] / 2**20
        lines.append("| " + " | ".join([
            str(row["job"]), _md_escape(label), row["status"], _latency_text(row),
            _speedup_text(row, summary.baseline), _fmt(row["compute_fraction"], ".3f"), _fmt(memory, ".0f"),
            _psnr_text(row), _fmt(row["ssim"], ".4f"), _fmt(row["lpips"], ".4f"),
            "★" if row["pareto"] else ""]) + " |")
    if summary.failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {row['job']} ({_md_escape(row['label'])}): {row['status']}: "
                  f"{_md_escape(row['error'] or 'no error recorded (killed, or still running)')}"
                  for row in summary.failed]
    lines += ["", f"![speedup vs quality]({PARETO_PNG})", "", f"![images]({GRID_PNG})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def _short(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)[:3]) or text


def _annotate(ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Label each point, moving a label to the next free slot around its point when it would overprint one
    already placed (close points are common: several configurations identical to the baseline)."""
    slots = [(4, 5), (4, -12), (4, 16), (4, -23), (4, 27), (4, -34)]
    placed: list[tuple[float, float]] = []
    for text, x, y in sorted(points, key=lambda p: (p[1], p[2])):
        px, py = ax.transData.transform((x, y))
        for dx, dy in slots:
            if all(abs(px + dx - qx) > 120 or abs(py + dy - qy) > 10 for qx, qy in placed):
                break
        placed.append((px + dx, py + dy))
        leader = None if (dx, dy) == slots[0] else {"arrowstyle": "-", "color": "grey", "lw": 0.5}
        ax.annotate(_short(text, 28), (x, y), fontsize=7, xytext=(dx, dy), textcoords="offset points",
                    arrowprops=leader)


def _write_pareto(path: Path, summary: Summary) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.add_subplot()
    rows = [r for r in summary.rows if r["speedup"] is not None and r["psnr_db"] is not None]
    ax.set_xlabel("speedup vs baseline (x)")
    ax.set_ylabel("PSNR vs baseline (dB)")
    ax.set_title(_short(f"baseline: {summary.baseline_note}", 100), fontsize=8)
    if not rows:
        ax.text(0.5, 0.5, "nothing to plot: no job has both a speedup and a quality\n"
                + _short(summary.baseline_error or summary.baseline_note, 70),
                ha="center", va="center", transform=ax.transAxes)
        fig.savefig(path, dpi=100)
        return
    finite = [r["psnr_db"] for r in rows if not math.isinf(r["psnr_db"])]
    cap = (max(finite) + 5) if finite else 60.0
    y = {r["job"]: cap if math.isinf(r["psnr_db"]) else r["psnr_db"] for r in rows}
    if any(math.isinf(r["psnr_db"]) for r in rows):
        ax.axhline(cap, color="grey", linestyle=":", linewidth=1)
        ax.text(0.01, cap, " identical to the baseline", transform=ax.get_yaxis_transform(),
                va="top", fontsize=7, color="grey")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["speedup"])
    for kind, colour, chosen in (("job", "tab:blue", [r for r in rows if pareto_eligible(r, summary.baseline)]),
                                 ("within noise, no spread or skipped nothing", "tab:grey",
                                  [r for r in rows if not pareto_eligible(r, summary.baseline)])):
        if chosen:
            ax.errorbar([r["speedup"] for r in chosen], [y[r["job"]] for r in chosen], fmt="o", color=colour,
                        xerr=[[r["speedup"] - (r["speedup_min"] or r["speedup"]) for r in chosen],
                              [(r["speedup_max"] or r["speedup"]) - r["speedup"] for r in chosen]],
                        elinewidth=1, capsize=2, zorder=2, label=kind)
    ax.plot([r["speedup"] for r in front], [y[r["job"]] for r in front], color="tab:red", marker="o",
            markerfacecolor="none", markersize=11, zorder=3, label="Pareto front")
    ax.margins(x=0.15, y=0.12)
    _annotate(ax, [(f"{r['job']}: {r['label']}", r["speedup"], y[r["job"]]) for r in rows])
    if summary.failed:
        ax.text(0.99, 0.01, _short("not plotted (failed): " + ", ".join(str(r["job"]) for r in summary.failed),
                                   60), transform=ax.transAxes, ha="right", va="bottom", fontsize=7)
    if any(math.isinf(r["psnr_db"]) for r in rows):
        ticks = [t for t in ax.get_yticks() if t < cap - 1] + [cap]
        ax.set_yticks(ticks, [f"{t:g}" for t in ticks[:-1]] + ["inf"])
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def _write_grid(path: Path, summary: Summary, jobs: list[Job]) -> None:
    """Prompts (and seeds) as rows, jobs as columns; a failed job's column says so."""
    from matplotlib.figure import Figure

    keyed = {job.num: _image_keys(job) for job in jobs}
    order = ([summary.baseline] if summary.baseline is not None else []) + [j.num for j in jobs]
    keys: list[tuple] = []
    for num in order:
        keys += [key for key in keyed[num] if key not in keys]
    shown = keys[:GRID_MAX_ROWS]
    by_job = {row["job"]: row for row in summary.rows}
    n_rows, n_cols = max(len(shown), 1), len(jobs)
    fig = Figure(figsize=(1.9 * n_cols + 1.6, 1.9 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for c, job in enumerate(jobs):
        row = by_job[job.num]
        title = f"{job.num}: {job.label}" + (" (baseline)" if job.num == summary.baseline else "")
        stats = (f"{_speedup_text(row, summary.baseline)}  PSNR {_psnr_text(row)}" if job.ok else row["status"])
        axes[0][c].set_title(_short(title, 24) + "\n" + stats, fontsize=7)
        for r in range(n_rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = keyed[job.num].get(shown[r]) if shown else None
            pixels = _pixels(image) if image is not None else None
            if pixels is not None:
                ax.imshow(pixels)
            else:
                text = "failed" if not job.ok else "missing or\nunreadable" if image is not None else "no image"
                ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8, transform=ax.transAxes)
            if c == 0 and shown:
                prompt, seed, _ = shown[r]
                ax.set_ylabel(_short(f"{prompt}", 22) + f"\nseed {seed}", fontsize=7)
    if len(keys) > len(shown):
        fig.suptitle(f"first {len(shown)} of {len(keys)} prompt/seed pairs", fontsize=8)
    fig.savefig(path, dpi=100)


# ------------------------------------------------------------------------------------------------ entry points

def _baseline_from_sweep_config(sweep_dir: Path) -> Optional[str]:
    """sweep.baseline as the sweep was run with (Hydra saves the sweep's config as multirun.yaml)."""
    value = _yaml_path(sweep_dir / "multirun.yaml", "sweep", "baseline")
    return None if value is None else str(value)


def write_report(sweep_dir: Path, baseline: Optional[str] = None) -> Summary:
    """Collect the jobs, choose the baseline, measure, and write every summary file into `sweep_dir`."""
    sweep_dir = Path(sweep_dir)
    for package in ("torchmetrics", "matplotlib"):
        if importlib.util.find_spec(package) is None:
            raise MissingPackageError("the sweep summary", package, "metrics")
    jobs = collect_jobs(sweep_dir)
    error = None
    try:
        base, note = choose_baseline(jobs, baseline)
    except SweepError as exc:
        base, note, error = None, "none (see error)", str(exc)
    if base is not None and not base.ok:
        note += f"; it did not succeed ({base.record.get('status')}): no speedup or quality"
    lpips = Lpips()
    rows = build_rows(jobs, base, lpips)
    summary = Summary(sweep_dir, rows, base.num if base else None, note, lpips.note, error)
    for row in rows:
        if row["images_missing"]:
            total = len(next(job for job in jobs if job.num == row["job"]).record.get("images") or [])
            summary.notes.append(f"job {row['job']} ({row['label']}): {row['images_missing']} of {total} images "
                                 f"missing or unreadable; its quality is over {row['quality_pairs']} image pairs")
    summary.notes += timing_notes(jobs, rows)
    if any(row["memory_kind"] == "process_peak_rss" for row in rows):
        summary.notes.append("peak memory on CPU is the process's peak RSS: jobs of one multirun share a "
                             "process, so it carries over from earlier jobs")
    write_json_atomic(sweep_dir / SUMMARY_JSON, summary.to_json())
    _write_csv(sweep_dir / SUMMARY_CSV, rows)
    _write_md(sweep_dir / SUMMARY_MD, summary)
    _write_pareto(sweep_dir / PARETO_PNG, summary)
    _write_grid(sweep_dir / GRID_PNG, summary, jobs)
    return summary


def rebuild_report(sweep_dir: Path, baseline: Optional[str] = None) -> str:
    """`diffgentor report SWEEP_DIR`: rewrite every summary file from the run.json files already there.
    `baseline` overrides the sweep.baseline the sweep ran with; returns one line saying what was written."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir}: no such folder")
    summary = write_report(sweep_dir, baseline if baseline is not None else _baseline_from_sweep_config(sweep_dir))
    if summary.baseline_error:
        raise SweepError(summary.baseline_error)
    return summary.describe()
