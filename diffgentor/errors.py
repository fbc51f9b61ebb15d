"""User-facing errors: each one is a single line saying what was wrong and how to fix it."""


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
