"""summary.csv, summary.json and summary.md, and the Summary they are written from."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from diffgentor.sweep.rows import BEYOND_NOISE, COLUMNS


SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD = "summary.csv", "summary.json", "summary.md"
PARETO_PNG, GRID_PNG = "pareto.png", "grid.png"
NA = "n/a"


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
                                       "images with the same prompt and seed as the job's references "
                                       "(quality_against: reference) or as the baseline's (baseline)",
                            "ssim": "torchmetrics structural_similarity_index_measure, data_range 1, mean",
                            "lpips": self.lpips_note},
                "notes": self.notes, "columns": list(COLUMNS), "rows": self.rows}


def _cell(value: Any) -> str:
    if value is None:
        return NA
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([[_cell(row[c]) for c in COLUMNS] for row in rows])
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return NA if value is None else f"{value:{spec}}{suffix}"


def psnr_text(row: dict) -> str:
    if row["psnr_db"] is None:
        return NA
    return "inf (identical)" if math.isinf(row["psnr_db"]) else f"{row['psnr_db']:.2f}"


def _latency_text(row: dict) -> str:
    text = _fmt(row["latency_median_s"], ".4f")
    if row["latency_min_s"] is not None and row["latency_max_s"] is not None:
        text += f" [{row['latency_min_s']:.4f}, {row['latency_max_s']:.4f}]"
    return text


def speedup_text(row: dict, baseline: Optional[int]) -> str:
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


def write_md(path: Path, summary: Summary) -> None:
    lines = [f"# Sweep summary: {summary.sweep_dir}", "",
             f"- jobs: {len(summary.rows)}, failed: {len(summary.failed)}",
             f"- baseline: {summary.baseline_note}"]
    if summary.baseline_error:
        lines.append(f"- error: {summary.baseline_error}")
    lines += ["- latency: median [min, max] per pipeline call over the timed calls; speedup: the baseline's "
              "median latency per image / the job's, [range] from the two latencies' spreads; *within noise* "
              "when the job's latency range overlaps the baseline's (never starred)",
              "- quality vs the image for the same prompt and seed without optimizations (torchmetrics): the "
              "job's own references where it ran with +quality=reference, else the baseline job's; PSNR pooled "
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
            speedup_text(row, summary.baseline), _fmt(row["compute_fraction"], ".3f"), _fmt(memory, ".0f"),
            psnr_text(row), _fmt(row["ssim"], ".4f"), _fmt(row["lpips"], ".4f"),
            "★" if row["pareto"] else ""]) + " |")
    if summary.failed:
        lines += ["", "## Failed jobs", ""]
        lines += [f"- job {row['job']} ({_md_escape(row['label'])}): {row['status']}: "
                  f"{_md_escape(row['error'] or 'no error recorded (killed, or still running)')}"
                  for row in summary.failed]
    lines += ["", f"![speedup vs quality]({PARETO_PNG})", "", f"![images]({GRID_PNG})", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
