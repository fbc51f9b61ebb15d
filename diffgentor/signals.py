"""SIGTERM as an exception, so that `timeout`, `docker stop` and SLURM end a run the way Ctrl-C does: the
run's record says "interrupted" and the images already written stay listed in it."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM; a BaseException, like KeyboardInterrupt, so no `except
    Exception` on the way swallows it."""


#: Exceptions that mean "stopped from outside" rather than "failed", with the exit code a shell expects.
INTERRUPTS = {KeyboardInterrupt: ("SIGINT", 130), Terminated: ("SIGTERM", 143)}


def interrupt_of(exc: BaseException) -> tuple[str, int] | None:
    """(signal name, exit code) when `exc` is an interruption, else None."""
    for kind, outcome in INTERRUPTS.items():
        if isinstance(exc, kind):
            return outcome
    return None


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises Terminated (main thread only; elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - signal API
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
