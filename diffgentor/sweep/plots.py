"""pareto.png (speedup vs PSNR, the front through jobs beyond noise) and grid.png (prompts x jobs)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from diffgentor.sweep.files import Summary, psnr_text, speedup_text
from diffgentor.sweep.jobs import Job
from diffgentor.image_quality import read_pixels
from diffgentor.sweep.quality import image_keys
from diffgentor.sweep.rows import pareto_eligible


#: grid.png shows at most this many prompt/seed rows (the first ones of the baseline).
GRID_MAX_ROWS = 8


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


def write_pareto(path: Path, summary: Summary) -> None:
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


def write_grid(path: Path, summary: Summary, jobs: list[Job]) -> None:
    """Prompts (and seeds) as rows, jobs as columns; a failed job's column says so."""
    from matplotlib.figure import Figure

    keyed = {job.num: image_keys(job) for job in jobs}
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
        stats = (f"{speedup_text(row, summary.baseline)}  PSNR {psnr_text(row)}" if job.ok else row["status"])
        axes[0][c].set_title(_short(title, 24) + "\n" + stats, fontsize=7)
        for r in range(n_rows):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            image = keyed[job.num].get(shown[r]) if shown else None
            pixels = read_pixels(image) if image is not None else None
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
