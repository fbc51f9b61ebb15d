"""Tuning a cache's settings against a quality budget (`python -m diffgentor -m +experiment=tune_<cache>`):
"the fastest setting that keeps PSNR >= 30 dB".

Hydra's Optuna sweeper (hydra-optuna-sweeper) searches the settings the experiment names under
`hydra.sweeper.params`; every trial is an ordinary job with `+quality=reference` (its references are made once
and cached), and returns two objectives to the sweeper: its median latency per call (minimize) and its PSNR
against the references (maximize). A trial that fails returns nothing, which Optuna records as a failed trial;
the study goes on. When the study ends, `write_tune_report` lists the Pareto-optimal trials and recommends the
fastest whose PSNR reaches `tune.min_psnr`, as an override line and as an experiment YAML to check in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

#: Identical images have infinite PSNR; the sampler is given this instead (it models numbers, not infinity).
PSNR_CAP_DB = 100.0
TUNE_MD, TUNE_JSON, TUNED_YAML = "tune.md", "tune.json", "tuned.yaml"
#: Config groups whose option a recommendation names (`+group=option`).
OPTION_GROUPS = ("attention", "cache", "compile", "memory")


def tune_problems(run_cfg: Any) -> list[str]:
    """A study measures quality against references: refused before load without them."""
    if getattr(run_cfg, "tune", None) is None:
        return []
    if getattr(getattr(run_cfg, "quality", None), "name", None) != "reference":
        return ["tune: a tuning study measures each trial's PSNR against references; add +quality=reference"]
    return []


def objectives(record: dict) -> Optional[tuple[float, float]]:
    """(median latency per call in s, PSNR in dB against the references) of a finished run; None when it has
    either missing (the sweeper then records a failed trial)."""
    latency = ((record.get("timings") or {}).get("latency_s") or {}).get("median")
    measured = record.get("quality") or {}
    if latency is None or not measured.get("quality_pairs"):
        return None
    psnr = PSNR_CAP_DB if measured.get("identical") else measured.get("psnr_db")
    if psnr is None or math.isnan(psnr):
        return None
    return float(latency), min(float(psnr), PSNR_CAP_DB)


@dataclass
class Trial:
    num: int
    folder: str
    status: str
    #: The searched settings as this trial set them ("cache.threshold" -> 0.21).
    values: dict
    latency_s: Optional[dict]
    psnr_db: Optional[float]
    ssim: Optional[float]
    #: The share of the denoiser's block compute the trial ran (its cache's evidence), None without one.
    compute_fraction: Optional[float]
    record: dict
    pareto: bool = False


def _trials(sweep_dir: Path, searched: list[str]) -> list[Trial]:
    from diffgentor.sweep.jobs import collect_jobs
    from diffgentor.sweep.rows import compute_fraction

    trials = []
    for job in collect_jobs(sweep_dir):
        values = {key: _setting(job.record.get("config") or {}, key) for key in searched}
        found = objectives(job.record) if job.ok else None
        trials.append(Trial(job.num, job.folder.name, job.record.get("status", "unknown"), values,
                            (job.record.get("timings") or {}).get("latency_s"),
                            found[1] if found else None, (job.record.get("quality") or {}).get("ssim"),
                            compute_fraction(job.record), job.record))
    return trials


def _setting(config: dict, key: str) -> Any:
    """`key` ("cache.threshold") of a run.json's resolved config, None where it has none."""
    node: Any = config
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def override_line(trial: Trial) -> str:
    """The command that runs the trial's configuration once (model, the optional groups it used, the searched
    settings)."""
    config = trial.record.get("config") or {}
    parts = [f"model={config.get('model', {}).get('name')}"]
    parts += [f"+{group}={config[group]['name']}" for group in OPTION_GROUPS
              if isinstance(config.get(group), dict) and config[group].get("name") not in (None, "none")]
    parts += [f"{key}={value}" for key, value in trial.values.items()]
    return "python -m diffgentor " + " ".join(parts)


def tuned_yaml(trial: Trial, min_psnr: float, sweep_dir: Path) -> str:
    """An experiment config of the recommended setting, to copy into conf/experiment/."""
    config = trial.record.get("config") or {}
    groups = [f"  - /{group}: {config[group]['name']}" for group in OPTION_GROUPS
              if isinstance(config.get(group), dict) and config[group].get("name") not in (None, "none")]
    lines = ["# @package _global_",
             f"# Tuned {datetime.now():%Y-%m-%d} (study {sweep_dir}): the fastest trial with PSNR >= {min_psnr} dB "
             f"against the references: trial {trial.num}, median latency {trial.latency_s['median']:.4f} s, "
             f"PSNR {_psnr(trial.psnr_db)} dB.",
             "# Copy to conf/experiment/<name>.yaml and run: python -m diffgentor +experiment=<name>",
             "defaults:", *groups, f"  - override /model: {config.get('model', {}).get('name')}"]
    settings = OmegaConf.from_dotlist([f"{key}={value}" for key, value in trial.values.items()])
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(settings)


def _psnr(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return f">= {PSNR_CAP_DB:.0f} (identical)" if value >= PSNR_CAP_DB else f"{value:.2f}"


def write_tune_report(sweep_dir: Path, searched: list[str], min_psnr: float) -> str:
    """tune.md, tune.json and (when a trial meets the budget) tuned.yaml in the study's folder; returns the
    line to print: the recommendation, or why there is none."""
    from diffgentor.record import write_json_atomic
    from diffgentor.sweep.rows import pareto_front

    trials = _trials(sweep_dir, searched)
    measured = [t for t in trials if t.psnr_db is not None and t.latency_s]
    front = pareto_front({t.num: (-t.latency_s["median"], t.psnr_db) for t in measured})
    for trial in measured:
        trial.pareto = trial.num in front
    within = sorted((t for t in measured if t.psnr_db >= min_psnr), key=lambda t: t.latency_s["median"])
    best = within[0] if within else None
    if best is not None:
        (sweep_dir / TUNED_YAML).write_text(tuned_yaml(best, min_psnr, sweep_dir), encoding="utf-8")
        verdict = (f"recommended (fastest with PSNR >= {min_psnr} dB): trial {best.num}, "
                   f"{best.latency_s['median']:.4f} s, PSNR {_psnr(best.psnr_db)} dB: {override_line(best)}")
        if best.compute_fraction is not None and best.compute_fraction >= 1.0:
            verdict += ("; it skipped no compute (compute_fraction 1.0), so its speed is noise, not the cache: "
                        "search settings that skip more")
        close = [t.num for t in within[1:] if t.latency_s["min"] <= best.latency_s["max"]]
        if close:
            verdict += (f" (within noise of trial{'s' * (len(close) > 1)} {', '.join(map(str, close))}, which also "
                        "meet the budget: their latency ranges overlap its)")
    elif measured:
        top = max(measured, key=lambda t: t.psnr_db)
        verdict = (f"no trial reaches PSNR >= {min_psnr} dB (the best: trial {top.num}, {_psnr(top.psnr_db)} dB, "
                   f"{', '.join(f'{k}={v}' for k, v in top.values.items())}); lower tune.min_psnr or search "
                   "settings that skip less")
    else:
        verdict = "no trial finished with a latency and a PSNR against the references: nothing to recommend"
    rows = [{"trial": t.num, "folder": t.folder, "status": t.status, **t.values,
             "latency_median_s": (t.latency_s or {}).get("median"), "latency_min_s": (t.latency_s or {}).get("min"),
             "latency_max_s": (t.latency_s or {}).get("max"), "psnr_db": t.psnr_db, "ssim": t.ssim,
             "compute_fraction": t.compute_fraction,
             "pareto": t.pareto, "recommended": best is not None and t.num == best.num} for t in trials]
    write_json_atomic(sweep_dir / TUNE_JSON, {"min_psnr": min_psnr, "searched": searched, "verdict": verdict,
                                              "psnr_cap_db": PSNR_CAP_DB, "trials": rows})
    _write_md(sweep_dir / TUNE_MD, trials, searched, min_psnr, verdict, best)
    return verdict


def _write_md(path: Path, trials: list[Trial], searched: list[str], min_psnr: float, verdict: str,
              best: Optional[Trial]) -> None:
    lines = ["# Tuning study", "", f"- budget: PSNR >= {min_psnr} dB against the references "
             "(the same prompts and seeds without optimizations)",
             "- latency: median [min, max] per pipeline call over the trial's timed calls; * Pareto-optimal "
             "(no other trial is both faster and closer to the references)",
             f"- {verdict}", ""]
    if best is not None:
        lines += ["```bash", override_line(best), "```", "", f"As an experiment: `{TUNED_YAML}` in this folder.", ""]
    lines += [f"| trial | {' | '.join(searched)} | status | latency (s) | compute fraction | PSNR (dB) | SSIM | |",
              f"|---:|{'---:|' * len(searched)}---|---:|---:|---:|---:|:-:|"]
    for t in sorted(trials, key=lambda t: ((t.latency_s or {}).get("median") is None,
                                          (t.latency_s or {}).get("median") or 0)):
        latency = (f"{t.latency_s['median']:.4f} [{t.latency_s['min']:.4f}, {t.latency_s['max']:.4f}]"
                   if t.latency_s else "n/a")
        mark = ", ".join(m for m, on in (("recommended", best is not None and t is best), ("*", t.pareto)) if on)
        values = " | ".join(f"{t.values[k]:.4g}" if isinstance(t.values.get(k), float) else str(t.values.get(k))
                            for k in searched)
        ssim = "n/a" if t.ssim is None else f"{t.ssim:.4f}"
        fraction = "n/a" if t.compute_fraction is None else f"{t.compute_fraction:.2f}"
        lines.append(f"| {t.num} | {values} | {t.status} | {latency} | {fraction} | {_psnr(t.psnr_db)} | {ssim} "
                     f"| {mark} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
