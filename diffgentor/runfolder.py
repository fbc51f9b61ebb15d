"""One writer per run folder, and no run over another run's results.

A run holds an exclusive lock (fcntl.flock on `<run folder>/.diffgentor.lock`) from before its record starts
until it ends, so a second run aimed at the same `hydra.run.dir` is refused while the first writes. A folder
that already holds a run.json is refused too, unless `resume=true` (a sweep rerunning its own unfinished
jobs; a finished job of the same config was already skipped) or `overwrite=true` (the old run.json and
images are removed first, so no stale PNG is left beside the new record). The kernel drops the lock when
the process dies, kill -9 included.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Iterator

from diffgentor.errors import ConfigError
from diffgentor.record import IMAGES_DIR, RUN_FILE

LOCK_FILE = ".diffgentor.lock"


class FolderInUseError(ConfigError):
    """The run folder is another run's: being written, or holding its results. Its record is not touched."""


def _existing_status(run_dir: Path) -> str | None:
    from diffgentor.resume import read_record

    if not (run_dir / RUN_FILE).exists():
        return None
    record = read_record(run_dir)
    return str(record.get("status")) if isinstance(record, dict) else "unreadable"


def locked_by_another(run_dir: Path) -> bool:
    """True while some run holds `run_dir`'s lock (its record must then be left to it)."""
    path = run_dir / LOCK_FILE
    if not path.exists():
        return False
    handle = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(handle)


def _in_use(run_dir: Path) -> FolderInUseError:
    return FolderInUseError(f"{run_dir}: another diffgentor run is writing there now; give this run its own "
                            "folder (hydra.run.dir=...)")


def _holds_results(run_dir: Path, status: str) -> FolderInUseError:
    return FolderInUseError(f"{run_dir} already holds a run's results ({RUN_FILE} status {status}); choose "
                            "another hydra.run.dir, or overwrite=true to replace them")


def unwritable_reason(folder: Path) -> str | None:
    """Why `folder` cannot be created and written into (None: it can), from its nearest existing ancestor."""
    probe = folder.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable (a read-only file system, or no permission)"
    return None


def refusal_before_start(run_dir: Path, resume: bool, overwrite: bool) -> str | None:
    """What own_run_folder would refuse, checked before Hydra writes anything into `run_dir` (its .hydra/
    record included): a folder that cannot be written, or another run's folder. None: the run may start."""
    unwritable = unwritable_reason(run_dir)
    if unwritable:
        return f"hydra.run.dir={run_dir}: {unwritable}; give an output folder you can write to"
    if locked_by_another(run_dir):
        return str(_in_use(run_dir))
    status = _existing_status(run_dir)
    if status is not None and not resume and not overwrite:
        return str(_holds_results(run_dir, status))
    return None


@contextlib.contextmanager
def own_run_folder(run_dir: Path, resume: bool, overwrite: bool) -> Iterator[None]:
    """Hold `run_dir` for this run (see the module docstring); raises FolderInUseError before writing."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(run_dir) from None
        status = _existing_status(run_dir)
        if status is not None and not resume:
            if not overwrite:
                raise _holds_results(run_dir, status)
            (run_dir / RUN_FILE).unlink()
            shutil.rmtree(run_dir / IMAGES_DIR, ignore_errors=True)
        elif status == "ok" and resume:
            raise FolderInUseError(f"{run_dir} holds a finished run of another config (resume=true skips only "
                                   "jobs of the same config); it is kept: rerun the sweep into a new folder, or "
                                   "overwrite=true to replace it")
        yield
    finally:
        os.close(handle)  # releases the lock
