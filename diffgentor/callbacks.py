"""Hydra callbacks (registered under hydra.callbacks in conf/config.yaml).

OutputFolderCheck refuses an output folder that cannot be used before Hydra writes into it.

SweepSummary writes the sweep's summary when a multirun ends (diffgentor/sweep/ does the work) and keeps
the outcome, so that `python -m diffgentor -m ...` can exit non-zero afterwards when a job failed: Hydra turns
an exception raised in a callback into a warning, and its multirun returns normally, so the exit code is set
by diffgentor.__main__.main() from `take_sweep_exit_code()`.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from diffgentor.record import RUN_FILE

log = logging.getLogger("diffgentor")


@dataclass
class SweepOutcome:
    sweep_dir: Path
    #: Lines explaining why the sweep did not fully succeed (failed jobs, a summary that could not be built).
    problems: list[str] = field(default_factory=list)


_outcome: Optional[SweepOutcome] = None


def note_sweep_problem(problem: str) -> None:
    """A reason for the running multirun to exit 1 (a job refused in a dry run, which leaves no record)."""
    if _outcome is not None:
        _outcome.problems.append(problem)


def take_sweep_exit_code() -> int:
    """1 when the multirun that just ended had a failed job or no summary (the reasons go to stderr), else 0;
    0 too when no multirun ran. Resets, so each multirun in a process is judged once."""
    global _outcome
    outcome, _outcome = _outcome, None
    if outcome is None or not outcome.problems:
        return 0
    for problem in outcome.problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1


class OutputFolderCheck(Callback):
    """Refuse, before Hydra creates the run folder and writes its .hydra/ record there, a folder that cannot
    be written (a file in the way, a read-only file system) or that is another run's (locked, or holding
    results without resume / overwrite): one `error:` line and exit 1, instead of Hydra's traceback or a
    second run's record over the first's. Hydra's `now` resolver caches its value in the config, so the
    folder checked is the folder the run gets."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from diffgentor.runfolder import refusal_before_start

        run_dir = Path(str(config.hydra.run.dir)).absolute()
        refusal = refusal_before_start(run_dir, bool(OmegaConf.select(config, "resume")),
                                       bool(OmegaConf.select(config, "overwrite")))
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            sys.exit(1)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from diffgentor.runfolder import unwritable_reason

        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        unwritable = unwritable_reason(sweep_dir)
        if unwritable:
            print(f"error: hydra.sweep.dir={sweep_dir}: {unwritable}; give a sweep folder you can write to",
                  file=sys.stderr)
            sys.exit(1)


def _report_study(config: DictConfig, outcome: SweepOutcome) -> None:
    """A tuning study's end: its Pareto-optimal trials and the recommended setting (tune.py)."""
    from diffgentor.tune import TUNE_MD, write_tune_report

    searched = [str(key).lstrip("+") for key in (OmegaConf.select(config, "hydra.sweeper.params") or {})]
    try:
        verdict = write_tune_report(outcome.sweep_dir, searched, float(config.tune.min_psnr))
    except Exception as exc:  # Hydra would only warn: record it so the exit code says so
        log.exception("tuning report failed")
        outcome.problems.append(f"no tuning report for {outcome.sweep_dir}: {type(exc).__name__}: {exc}")
        return
    print(f"tuning study: {outcome.sweep_dir / TUNE_MD}\n{verdict}")


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _outcome
        sweep_dir = Path(str(config.hydra.sweep.dir))
        _outcome = SweepOutcome(sweep_dir)
        if OmegaConf.select(config, "resume") and not any(sweep_dir.glob(f"*/{RUN_FILE}")):
            log.warning("resume=true, but %s holds no job yet: every job will run. To resume a sweep, give its "
                        "folder: hydra.sweep.dir=multirun/<date>/<time>", sweep_dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from diffgentor.sweep import SUMMARY_MD, write_report

        outcome = _outcome or SweepOutcome(Path(str(config.hydra.sweep.dir)))
        if OmegaConf.select(config, "dry_run") is True:
            return  # a dry run loads nothing and writes no run.json: there is no summary to build
        try:
            summary = write_report(outcome.sweep_dir, OmegaConf.select(config, "sweep.baseline"))
        except Exception as exc:  # Hydra would only warn: record it so the exit code says so
            log.exception("sweep summary failed")
            outcome.problems.append(f"no sweep summary for {outcome.sweep_dir}: {type(exc).__name__}: {exc} "
                                    f"(rebuild it with `diffgentor report {outcome.sweep_dir}`)")
            return
        print(f"sweep summary: {outcome.sweep_dir / SUMMARY_MD} ({summary.describe()})")
        if OmegaConf.select(config, "tune") is not None:
            _report_study(config, outcome)
        if summary.baseline_error:
            outcome.problems.append(summary.baseline_error)
        if summary.failed:
            jobs = ", ".join(f"{row['job']} ({row['label']})" for row in summary.failed)
            outcome.problems.append(f"{len(summary.failed)} of {len(summary.rows)} jobs failed: {jobs}; "
                                    f"see {outcome.sweep_dir / SUMMARY_MD}")
