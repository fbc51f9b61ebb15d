"""Tracking in MLflow (`+tracking=mlflow`, conf/tracking/mlflow.yaml): every run's record, sent to MLflow.

MlflowTracking is a Hydra callback, so it sees every job whichever launcher runs it, in the job's own process:
- on_job_start opens the job's MLflow run (RUNNING while the job runs); on_job_end sends what the job's
  run.json says (its config as params; timings, peak memory, compute fractions and quality as metrics;
  run.json, diffgentor.log and images/ as artifacts) and closes the run with the record's status.
- A multirun is one parent run: on_multirun_start opens it and writes where it is to mlflow.json in the sweep
  folder, where every job finds it (the joblib and submitit launchers run jobs in processes of their own);
  on_multirun_end adds the sweep folder's files, the summary SweepSummary has written by then (conf/config.yaml
  keeps this callback's slot before SweepSummary's, and Hydra ends callbacks in reverse order).
- Tracking never fails nor changes a run: anything MLflow raises is one warning, and that run sends nothing
  more. A job ended by sys.exit (a refused single run, Ctrl-C) never reaches on_job_end: an atexit hook
  closes its MLflow run from its run.json instead.
- MlflowClient calls only, no fluent API: no process-wide active run in a long multirun process, and the
  status set is the one that stays (the fluent `with start_run()` overwrites it on exit).
mlflow is imported only when tracking is on (`import mlflow` takes ~1.5 s).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from diffgentor.errors import MissingPackageError
from diffgentor import launchers

log = logging.getLogger("diffgentor")

#: In a multirun's sweep folder: the parent run's store, experiment and id (or why there is none).
PARENT_FILE = "mlflow.json"
#: run.json status -> MLflow run status; anything else (no record, "running") is FAILED.
MLFLOW_STATUS = {"ok": "FINISHED", "failed": "FAILED", "refused": "FAILED", "interrupted": "KILLED"}
#: Unless the user set them: a server that is down fails in a second, not after MLflow's ~4 minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
#: Loggers MLflow gives handlers of its own; routed through the logging tree (diffgentor.log, not the console).
MLFLOW_LOGGERS = ("mlflow", "alembic", "sqlalchemy.engine", "huey")
TRUNCATED = "...[truncated]"
#: Tag values kept (MLflow 3 takes 8000 characters; an error line is far shorter).
TAG_LIMIT = 5000
_TRACKING_OVERRIDE = re.compile(r"^\+{0,2}tracking=(?P<options>\S+)$")
_NOT_IN_KEYS = re.compile(r"[^\w\-. /]")  # MLflow's key characters: alphanumerics, _ - . space /


def check_tracking_package(argv: Sequence[str]) -> None:
    """Refuse, before Hydra starts, `+tracking=mlflow` when mlflow is not installed."""
    for arg in argv:
        match = _TRACKING_OVERRIDE.match(arg)
        if match and "mlflow" in match.group("options").split(",") and not launchers.installed("mlflow"):
            raise MissingPackageError(arg, "mlflow-skinny", "mlflow")


@dataclass
class _OpenRun:
    client: Any
    uri: str
    experiment_id: str
    run_id: str
    #: The job's run folder, or the sweep folder of a multirun's parent run.
    folder: Path
    #: time.time() when opened: a run.json older than that was not written by this job (a resume skipped it).
    opened_s: float
    log_name: str = ""


class MlflowTracking(Callback):
    """`uri`: null is MLFLOW_TRACKING_URI when set, else `sqlite:///<cwd>/mlflow.db` with artifacts in
    `<cwd>/mlartifacts`; `experiment`: the MLflow experiment (created when missing)."""

    def __init__(self, uri: Optional[str] = None, experiment: str = "diffgentor") -> None:
        self.uri = uri
        self.experiment = experiment
        self._parent: Optional[_OpenRun] = None
        self._job: Optional[_OpenRun] = None
        self._exit_hook = False

    # ---- Hydra's hooks ----------------------------------------------------------------------------------

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "dry_run") is True:
            return  # a dry run writes no records: nothing to track
        sweep_dir = _from_cwd(config, config.hydra.sweep.dir)
        overrides = list(config.hydra.overrides.task)
        self._parent = self._attempt(f"the sweep {sweep_dir}", lambda: self._open(
            config, str(config.hydra.sweep.dir), {"diffgentor.sweep_dir": str(sweep_dir)},
            {"overrides": " ".join(overrides)}, sweep_dir))
        where = ({"tracking_uri": self._parent.uri, "experiment_id": self._parent.experiment_id,
                  "run_id": self._parent.run_id}
                 if self._parent else {"error": "the sweep's MLflow run could not be created (see the warning)"})
        try:
            from diffgentor.record import write_json_atomic

            sweep_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(sweep_dir / PARENT_FILE, where)
        except OSError as exc:
            log.warning("MLflow tracking: could not write %s (%s): the jobs are not tracked",
                        sweep_dir / PARENT_FILE, exc)
        self._at_exit_close()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "dry_run") is True:
            return
        run_dir = Path(str(config.hydra.runtime.output_dir))
        tags = {"diffgentor.run_dir": str(run_dir)}
        parent = None
        if config.hydra.mode == RunMode.MULTIRUN:
            parent = _read_parent(_from_cwd(config, config.hydra.sweep.dir))
            if "error" in parent:
                log.info("not tracked in MLflow: %s", parent["error"])
                return
            tags["mlflow.parentRunId"] = parent["run_id"]
        self._job = self._attempt(str(run_dir), lambda: self._open(config, run_dir.name, tags, {}, run_dir, parent))
        if self._job is not None:
            self._job.log_name = f"{config.hydra.job.name}.log"
            log.info("MLflow: run %s at %s", self._job.run_id, self._job.uri)
            self._at_exit_close()

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        job, self._job = self._job, None
        if job is not None and self._close(job, _finish_job) and config.hydra.mode != RunMode.MULTIRUN:
            print(f"tracked in MLflow: run {job.run_id} at {job.uri}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        parent, self._parent = self._parent, None
        if parent is not None and self._close(parent, _finish_sweep):
            print(f"tracked in MLflow: sweep run {parent.run_id} at {parent.uri}")

    # ---- MLflow ------------------------------------------------------------------------------------------

    def _open(self, config: DictConfig, name: str, tags: dict, params: dict, folder: Path,
              parent: Optional[dict] = None) -> _OpenRun:
        from mlflow.entities import Param

        if parent is not None:  # a job of a multirun: the parent's store and experiment
            uri, experiment_id = parent["tracking_uri"], parent["experiment_id"]
            client = _client(uri)
        else:
            uri, artifacts = self._store(config)
            client = _client(uri)
            experiment_id = _experiment_id(client, self.experiment, artifacts)
        run = client.create_run(experiment_id, run_name=name, tags={**_context_tags(), **tags})
        if params:
            client.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items()])
        return _OpenRun(client, uri, experiment_id, run.info.run_id, folder, time.time())

    def _store(self, config: DictConfig) -> tuple[str, Optional[Path]]:
        """The tracking URI, and where a SQLite store's artifacts go (beside the database file: MLflow's own
        default is relative to the folder the experiment happened to be created in)."""
        from mlflow.environment_variables import MLFLOW_TRACKING_URI

        uri = self.uri or MLFLOW_TRACKING_URI.get()
        if not uri:
            uri = f"sqlite:///{_from_cwd(config, 'mlflow.db')}"
        if uri.startswith("sqlite:///"):
            return uri, Path(uri[len("sqlite:///"):]).absolute().parent / "mlartifacts"
        return uri, None

    def _attempt(self, what: str, action: Callable[[], _OpenRun]) -> Optional[_OpenRun]:
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - tracking must never fail a run: one warning says why
            log.warning("MLflow tracking failed for %s (not tracked; its files are unaffected): %s: %s",
                        what, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None

    def _close(self, opened: _OpenRun, finish: Callable[[_OpenRun], None]) -> bool:
        try:
            finish(opened)
            return True
        except Exception as exc:  # noqa: BLE001 - as in _attempt; the run is then closed as FAILED if it can be
            log.warning("MLflow tracking failed for %s (tracked incompletely; its files are unaffected): %s: %s",
                        opened.folder, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            try:
                _terminate(opened, "FAILED")
            except Exception:  # noqa: BLE001 - the warning above already said tracking failed
                log.debug("MLflow: could not mark %s FAILED", opened.run_id, exc_info=True)
            return False

    def _at_exit_close(self) -> None:
        if not self._exit_hook:
            atexit.register(self._close_at_exit)
            self._exit_hook = True

    def _close_at_exit(self) -> None:
        """sys.exit skipped the end hooks (a refused single run, an interrupted job): close what is open."""
        job, self._job = self._job, None
        if job is not None:
            self._close(job, _finish_job)
        parent, self._parent = self._parent, None
        if parent is not None:
            self._close(parent, lambda opened: _terminate(opened, "KILLED"))


def _client(uri: str) -> Any:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    from mlflow import MlflowClient

    for name in MLFLOW_LOGGERS:  # like console.route_library_logs: the job's logging config decides
        logger = logging.getLogger(name)
        logger.handlers, logger.propagate = [], True
        logger.setLevel(max(logger.level, logging.WARNING))  # its INFO (database set-up) is not about the run
    return MlflowClient(tracking_uri=uri)


@functools.lru_cache(maxsize=None)
def _context_tags() -> dict:
    """The tags MLflow's fluent API adds to a run (mlflow.user, mlflow.source.*), once per process (0.3 s)."""
    from mlflow.tracking.context.registry import resolve_tags

    return resolve_tags({})


def _experiment_id(client: Any, name: str, artifacts: Optional[Path]) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifacts.as_uri() if artifacts else None)
    except Exception:  # noqa: BLE001 - another process created it meanwhile; anything else raises again below
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def _finish_job(job: _OpenRun) -> None:
    """Send the job's run.json, log and images, and close its run with the record's status."""
    from mlflow.entities import Metric, Param, RunTag

    from diffgentor.record import RUN_FILE
    from diffgentor.resume import load_record

    record, unreadable = load_record(job.folder)
    status = (record or {}).get("status") or ("unreadable" if unreadable else "missing")
    tags = {"diffgentor.status": status}
    if record is not None:
        if record.get("error"):
            tags["diffgentor.error"] = record["error"]
        if (job.folder / RUN_FILE).stat().st_mtime < job.opened_s:
            tags["diffgentor.skipped"] = f"resume=true: {RUN_FILE} was already ok for this config"
        if isinstance((record.get("quality") or {}).get("against"), str):
            tags["quality.against"] = record["quality"]["against"]
        now_ms = int(time.time() * 1000)
        params = {**_flat(record.get("config") or {}), "overrides": " ".join(map(str, record.get("overrides") or []))}
        job.client.log_batch(job.run_id, params=[Param(k, _param(v)) for k, v in params.items()],
                             metrics=[Metric(k, v, now_ms, 0) for k, v in run_metrics(record).items()])
    elif unreadable:
        tags["diffgentor.error"] = unreadable
    job.client.log_batch(job.run_id, tags=[RunTag(k, _truncated(v, TAG_LIMIT)) for k, v in tags.items()])
    for file in (RUN_FILE, job.log_name):
        if file and (job.folder / file).is_file():
            job.client.log_artifact(job.run_id, str(job.folder / file))
    if (job.folder / "images").is_dir():
        job.client.log_artifacts(job.run_id, str(job.folder / "images"), "images")
    _terminate(job, MLFLOW_STATUS.get(status, "FAILED"))


def _finish_sweep(parent: _OpenRun) -> None:
    """Attach the files at the top of the sweep folder (summary.csv / .json / .md, pareto.png, grid.png, Hydra's
    multirun.yaml, a tuning study's report); FINISHED when every job succeeded, else FAILED."""
    from diffgentor.sweep.files import SUMMARY_JSON

    for path in sorted(parent.folder.iterdir()):
        if path.is_file() and path.name != PARENT_FILE and not path.name.startswith("."):
            parent.client.log_artifact(parent.run_id, str(path))
    try:
        failed = json.loads((parent.folder / SUMMARY_JSON).read_text(encoding="utf-8")).get("failed")
    except (OSError, ValueError, AttributeError):
        failed = None  # no summary (or not one): the sweep did not end well
    _terminate(parent, "FINISHED" if failed == 0 else "FAILED")


def _terminate(opened: _OpenRun, status: str) -> None:
    """set_terminated; the links MLflow prints to stdout for a server's runs (two lines a run) go to the log."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        opened.client.set_terminated(opened.run_id, status)
    if printed.getvalue().strip():
        log.info("MLflow: %s", " ".join(printed.getvalue().split()))


def run_metrics(record: dict) -> dict[str, float]:
    """The numbers of a run.json that MLflow charts: latency, throughput, setup times, peak memory, each
    cache's compute_fraction, compile's first-call time and the numeric values of `quality`."""
    timings = _mapping(record.get("timings"))
    latency = _mapping(timings.get("latency_s"))
    found: dict[str, Any] = {f"latency_s.{k}": latency.get(k) for k in ("median", "min", "max")}
    found |= {k: timings.get(k) for k in ("images_per_s", "s_per_step", "load_s", "optimize_s", "warmup_s")}
    found["peak_bytes"] = _mapping(record.get("memory")).get("peak_bytes")
    for optimization in record.get("optimizations") or []:
        name, evidence = _mapping(optimization).get("name"), _mapping(_mapping(optimization).get("evidence"))
        found[f"{name}.compute_fraction"] = evidence.get("compute_fraction")
        for component, timing in _mapping(evidence.get("timing")).items():  # compile: per compiled component
            for key in ("first_call_s", "compile_overhead_s"):
                found[f"{name}.{component}.{key}"] = _mapping(timing).get(key)
    found |= {f"quality.{k}": v for k, v in _mapping(record.get("quality")).items()}
    return {_NOT_IN_KEYS.sub("_", k): float(v) for k, v in found.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _flat(config: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> values as text (lists and empty mappings as JSON)."""
    flat = {}
    for key, value in config.items():
        dotted = _NOT_IN_KEYS.sub("_", f"{prefix}{key}")
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{dotted}."))
        else:
            flat[dotted] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def _truncated(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit - len(TRUNCATED)] + TRUNCATED


def _param(value: str) -> str:
    """A param value within MLflow's limit (6000 characters in MLflow 3), marked where it was cut."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    return _truncated(value, MAX_PARAM_VAL_LENGTH)


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _from_cwd(config: DictConfig, path: Any) -> Path:
    """`path` from the folder the command ran in (a job with hydra.job.chdir=true runs in its own)."""
    return Path(str(config.hydra.runtime.cwd)) / str(path)


def _read_parent(sweep_dir: Path) -> dict:
    try:
        parent = json.loads((sweep_dir / PARENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {"error": f"no sweep run to attach to ({sweep_dir / PARENT_FILE}: {exc})"}
    return parent if isinstance(parent, dict) and ("run_id" in parent or "error" in parent) else \
        {"error": f"{sweep_dir / PARENT_FILE} is not a sweep run's record"}
