"""A sweep's summary, built from its jobs' run.json files alone (so it can be rebuilt after a crash).

In the sweep folder: summary.csv / summary.json (one row per job), summary.md (the same as a table, the
baseline and the failures spelled out), pareto.png (speedup vs PSNR, Pareto front marked) and grid.png
(prompts x configurations). Quality is measured against the baseline job's image for the same prompt and
seed, with torchmetrics: PSNR (pooled over the job's images) and SSIM (mean) always, LPIPS where its weights
are on this machine. Speedup = the baseline's median latency per image / the job's, with its range from the
latencies' spread (the baseline's min / the job's max to the baseline's max / the job's min). A speedup whose
latency range overlaps the baseline's is within noise; it, a speedup measured without a spread, and a job
whose caches skipped nothing are never starred on the Pareto front.

One module per part of the report: jobs.py (the job folders and their labels), baseline.py (which job the
others are measured against), quality.py (images against the baseline's), rows.py (one row per job, noise,
the Pareto front, notes), files.py (csv, json, md) and plots.py (pareto.png, grid.png); this module puts
them together.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from diffgentor.errors import MissingPackageError
from diffgentor.record import write_json_atomic
from diffgentor.sweep.baseline import choose_baseline
from diffgentor.sweep.files import (GRID_PNG, PARETO_PNG, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, Summary,
                                    write_csv, write_md)
from diffgentor.sweep.jobs import SweepError, collect_jobs, yaml_path
from diffgentor.sweep.plots import write_grid, write_pareto
from diffgentor.image_quality import Lpips
from diffgentor.sweep.rows import build_rows, memory_notes, timing_notes


def _baseline_from_sweep_config(sweep_dir: Path) -> Optional[str]:
    """sweep.baseline as the sweep was run with (Hydra saves the sweep's config as multirun.yaml)."""
    value = yaml_path(sweep_dir / "multirun.yaml", "sweep", "baseline")
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
    summary.notes += memory_notes(jobs, rows)
    write_json_atomic(sweep_dir / SUMMARY_JSON, summary.to_json())
    write_csv(sweep_dir / SUMMARY_CSV, rows)
    write_md(sweep_dir / SUMMARY_MD, summary)
    write_pareto(sweep_dir / PARETO_PNG, summary)
    write_grid(sweep_dir / GRID_PNG, summary, jobs)
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
