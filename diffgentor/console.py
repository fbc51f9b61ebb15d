"""What reaches the user's terminal: diffgentor's own lines and one image bar; library notices go to the log.

diffusers and transformers each print through a stderr handler of their own (notices such as "CLIPImageProcessor
requires torchvision" or "FasterCache is a purely experimental feature") and draw "Loading pipeline
components" / "Loading weights" bars on every from_pretrained. None of that is about the user's run. Here the
libraries' records are handed to the standard logging tree, where conf/hydra/job_logging/diffgentor.yaml
writes them to the run's diffgentor.log and keeps them off the console (ConsoleFilter), and their loading bars
are switched off while a pipeline loads.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

#: Loggers whose records are ours: they reach the console at WARNING and above.
OWN_LOGGERS = ("diffgentor", "__main__")
#: Below this level, records of any other logger (diffusers, transformers, torch, py.warnings) stay in the log.
LIBRARY_CONSOLE_LEVEL = logging.ERROR


class ConsoleFilter(logging.Filter):
    """Passes diffgentor's records (the handler's level applies) and other loggers' errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = any(record.name == name or record.name.startswith(f"{name}.") for name in OWN_LOGGERS)
        return ours or record.levelno >= LIBRARY_CONSOLE_LEVEL


def _library_logging_modules() -> list:
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    return [diffusers_logging, transformers_logging]


def route_library_logs() -> None:
    """Send diffusers' and transformers' records (and Python warnings) through the logging tree instead of
    their own stderr handlers, so the job's logging config decides where they go."""
    for library in _library_logging_modules():
        library.disable_default_handler()
        library.enable_propagation()
    logging.captureWarnings(True)


@contextlib.contextmanager
def no_loading_bars() -> Iterator[None]:
    """from_pretrained without the libraries' per-component and per-file bars; their previous state restored."""
    libraries = _library_logging_modules()
    enabled = [library.is_progress_bar_enabled() for library in libraries]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, enabled):
            if was_enabled:
                library.enable_progress_bar()
