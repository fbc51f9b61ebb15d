"""One summary row per job: latency with its spread, speedup against the baseline and whether it stands
beyond noise, compute fraction, memory, quality, the Pareto front; and the notes on what makes the jobs
compare less well than they look."""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

from diffgentor.resume import config_hash
from diffgentor.sweep.jobs import Job
from diffgentor.image_quality import Lpips, quality
from diffgentor.sweep.quality import decoded_images


#: One row per job, in this order (csv header, json keys, and what summary.md shows a selection of).
COLUMNS = ("job", "label", "status", "latency_median_s", "latency_min_s", "latency_max_s", "latency_n",
           "speedup", "speedup_min", "speedup_max", "noise", "compute_fraction", "peak_bytes", "memory_kind",
           "psnr_db", "ssim", "lpips", "identical", "quality_pairs", "quality_against", "images_missing", "pareto",
           "load_s", "optimize_s", "warmup_s", "overrides", "error", "folder", "config_hash")
#: The `noise` column: how a job's speedup stands against the spread of the two latencies it divides.
BEYOND_NOISE, WITHIN_NOISE, NO_SPREAD = "beyond noise", "within noise", "no spread"


def compute_fraction(record: dict) -> Optional[float]:
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


def speedup_against(job: Job, baseline: Optional[Job]) -> dict:
    """The job's speedup over the baseline, its range from both latencies' spreads, and whether it stands
    beyond that noise (both timed more than once, and the latency ranges do not overlap); all None without
    a baseline that succeeded."""
    median = job.latency_per_image_s()
    base = baseline.latency_per_image_s() if baseline is not None and baseline.ok else None
    if not (job.ok and median and base):
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


def recorded_reference_quality(record: dict) -> Optional[dict]:
    """The run's own quality against its references (`+quality=reference`), when it measured one; run.json
    holds no infinity, so identical images' PSNR comes back as inf here, as the baseline comparison gives."""
    measured = record.get("quality") or {}
    if measured.get("against") != "reference" or not measured.get("quality_pairs"):
        return None
    values = {key: measured.get(key) for key in ("psnr_db", "ssim", "lpips", "identical", "quality_pairs")}
    if values["identical"] and values["psnr_db"] is None:
        values["psnr_db"] = math.inf
    return values


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
            **speedup_against(job, baseline),
            "compute_fraction": compute_fraction(record),
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
        against_reference = recorded_reference_quality(record) if job.ok else None
        if against_reference is not None:
            row.update(against_reference, quality_against="reference")
        elif job.ok and base_pixels is not None:
            row.update(quality(pixels, base_pixels, lpips), quality_against="baseline")
        else:
            row.update(psnr_db=None, ssim=None, lpips=None, identical=None, quality_pairs=0, quality_against=None)
        rows.append({column: row[column] for column in COLUMNS})
    base_num = baseline.num if base_ok else None
    points = {r["job"]: (r["speedup"], r["psnr_db"]) for r in rows
              if r["speedup"] is not None and r["psnr_db"] is not None and pareto_eligible(r, base_num)}
    front = pareto_front(points)
    for row in rows:
        row["pareto"] = row["job"] in front
    return rows


def memory_notes(jobs: list[Job], rows: list[dict]) -> list[str]:
    """What peak memory means here: each job's own where every job had its own process (joblib, submitit,
    SLURM), carried over where jobs shared one (Hydra's basic launcher, or a reused worker: a CPU peak RSS
    never goes down)."""
    finished = [job.record.get("environment") or {} for job in jobs if job.ok]
    processes = {(env.get("host"), env.get("pid")) for env in finished}
    if len(finished) > 1 and len(processes) == len(finished):
        return ["each job ran in its own process: peak memory is each job's own"]
    if len(processes) < len(finished) and any(row["memory_kind"] == "process_peak_rss" for row in rows):
        return ["peak memory on CPU is the process's peak RSS: jobs of one multirun share a process, so it "
                "carries over from earlier jobs"]
    return []


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
