"""User-facing errors: each one is a single line saying what was wrong and how to fix it."""

from __future__ import annotations

import errno

#: errno values meaning "the disk (or the user's quota) is full".
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiffgentorError(Exception):
    """A problem the user can fix; printed as one line, without a traceback."""


class ConfigError(DiffgentorError):
    """The composed configuration is invalid (bad value, bad environment variable, bad file)."""


class UnsupportedError(DiffgentorError):
    """A requested optimization cannot apply to this pipeline or conflicts with another one."""


class RefusedError(UnsupportedError):
    """The plan refused one or more optimizations; `reasons` holds each, as run.json records them."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = list(reasons)


class MissingPackageError(UnsupportedError):
    """An optional package is needed; the message names the pip extra that provides it."""

    def __init__(self, what: str, package: str, extra: str):
        super().__init__(
            f"{what} needs the package '{package}', which is not installed: "
            f"pip install 'diffgentor[{extra}]'"
        )
        self.package = package
        self.extra = extra


class ModelLoadError(DiffgentorError):
    """The model could not be found or loaded."""


def user_message(exc: BaseException) -> str | None:
    """The one line a user error prints (None: an unexpected error, shown with its traceback). A file-system
    error (read-only folder, a file where a folder should be, a full disk) is the user's to fix too."""
    if isinstance(exc, DiffgentorError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror} (errno {exc.errno}); {_fix_for(exc.errno)}"
    return None


def _fix_for(errno_value: int | None) -> str:
    if errno_value in NO_SPACE:
        return ("free space there or give an output folder on another disk (hydra.run.dir=...); the images "
                "written so far are listed in run.json")
    return "give an output folder you can write to (hydra.run.dir=...)"
