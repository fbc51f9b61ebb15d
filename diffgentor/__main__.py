"""`python -m diffgentor [overrides]`: the Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffgentor.config import CONFIG_DIR, register_configs
from diffgentor.distributed import world_from_env
from diffgentor.errors import user_message
from diffgentor.signals import Terminated, interrupt_of, sigterm_raises

log = logging.getLogger("diffgentor")

register_configs()


def _show_full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _job_failed(exc: Exception, cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """In a multirun, no failure stops the sweep: the error is printed (with its traceback unless it is a user
    error), the job's run.json says "failed", and main() exits 1 once the sweep summary is written."""
    from diffgentor.resume import failure_message, record_failure

    from diffgentor.callbacks import note_sweep_problem

    message = user_message(exc)
    if _show_full_errors() or message is None:
        log.error("job failed: %s", run_dir, exc_info=exc)
    print(f"error: {message or failure_message(exc)}", file=sys.stderr)
    if cfg.get("dry_run") is True:  # a dry run writes no record; its exit code says a job was refused
        note_sweep_problem(f"dry run: job {run_dir.name} was refused (see above)")
        return
    try:
        record_failure(run_dir, cfg, overrides, exc)
    except OSError as write_error:  # the folder itself is what failed: say so, and let the sweep go on
        print(f"error: could not record the failure in {run_dir}: {write_error.strerror}", file=sys.stderr)


def _stopped(exc: BaseException, cfg: DictConfig, run_dir: Path, overrides: list[str]) -> None:
    """Ctrl-C or SIGTERM: the record says "interrupted" (run.py already did once its record existed), one
    line says so, and the process ends with the shell's code for that signal (a sweep stops here too)."""
    from diffgentor.resume import record_failure

    name, code = interrupt_of(exc)
    record_failure(run_dir, cfg, overrides, exc, status="interrupted")
    if _show_full_errors():
        raise exc
    print(f"error: interrupted by {name}; the images written so far are listed in {run_dir / 'run.json'}",
          file=sys.stderr)
    sys.exit(code)


def _skip_if_done(cfg: DictConfig, run_dir: Path) -> bool:
    """resume=true: True (and a line saying so) when run_dir already holds this config's finished run."""
    from diffgentor.resume import completed
    from diffgentor.run import config_as_dict, resolve_config

    resolve_config(cfg)  # a config that does not resolve fails here as it would in execute()
    if completed(run_dir, config_as_dict(cfg)) is None:
        return False
    print(f"skipped (resume=true): {run_dir / 'run.json'} is ok for this config")
    return True


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> Optional[tuple[float, float]]:
    """Run one job; a user error is one line on stderr and a non-zero exit; in a multirun, see _job_failed.
    A trial of a tuning study returns its objectives to the sweeper (tune.py)."""
    from diffgentor.console import route_library_logs
    from diffgentor.run import execute

    route_library_logs()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    try:
        with sigterm_raises():
            if cfg.resume and _skip_if_done(cfg, run_dir):
                return None
            data = execute(cfg, run_dir, overrides)
    except (KeyboardInterrupt, Terminated) as exc:
        _stopped(exc, cfg, run_dir, overrides)
    except Exception as exc:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            _job_failed(exc, cfg, run_dir, overrides)
            return None
        message = user_message(exc)
        if message is None or _show_full_errors():
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    if data is not None and "distributed" not in data and world_from_env() is not None:
        return None  # a rank other than 0: rank 0 says what the whole run wrote
    if data is not None:
        images = len(data["images"])
        print(f"wrote {images} image{'s' * (images != 1)} to {run_dir / 'images'}  (record: {run_dir / 'run.json'})")
        if cfg.get("tune") is not None and hydra_cfg.mode == RunMode.MULTIRUN:
            from diffgentor.tune import objectives

            return objectives(data)
    return None


def main() -> None:
    """`python -m diffgentor`: the Hydra app; after a multirun, exit 1 if a job failed (see callbacks.py)."""
    from diffgentor.app_help import print_app_help
    from diffgentor.callbacks import take_sweep_exit_code
    from diffgentor.jobdirs import exclude_constant_overrides

    if print_app_help(sys.argv[1:]):
        return
    from diffgentor.errors import MissingPackageError
    from diffgentor.launchers import check_launcher_plugin, check_sweeper_plugin
    from diffgentor.tracking import check_tracking_package

    try:
        check_launcher_plugin(sys.argv[1:])
        check_sweeper_plugin(sys.argv[1:])
        check_tracking_package(sys.argv[1:])
    except MissingPackageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    from diffgentor.distributed import start

    world = world_from_env()
    if world is not None:
        if any(arg in ("-m", "--multirun") for arg in sys.argv[1:]):
            print("error: a multirun under torchrun would run every job on every rank; run one configuration "
                  "per torchrun, or spread a sweep's jobs with a launcher (hydra/launcher=parallel)",
                  file=sys.stderr)
            sys.exit(1)
        sys.argv += start(world, sys.argv[1:])
    from diffgentor.record import session_id

    session_id()  # before any job or launcher starts: every job of this invocation shares it
    sys.argv[1:] = exclude_constant_overrides(sys.argv[1:])
    hydra_app()
    code = take_sweep_exit_code()
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
