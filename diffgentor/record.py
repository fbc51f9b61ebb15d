"""What a run leaves behind: run.json (written atomically, status first "running" then "ok"/"failed"),
the environment it ran in, and images named and tagged so they can be traced back to prompt and seed."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import unicodedata
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from PIL import Image, PngImagePlugin

from diffgentor.errors import NO_SPACE, DiffgentorError

RUN_FILE = "run.json"
IMAGES_DIR = "images"
SLUG_MAX_CHARS = 48
#: Names one invocation of diffgentor; set once by the first process and inherited by the processes it
#: starts (Hydra's joblib / submitit workers), so a sweep summary can tell jobs timed in another session (a
#: resume) apart.
SESSION_VARIABLE = "DIFFGENTOR_SESSION"


def session_id() -> str:
    """This invocation's id: the inherited one, else a new one (set for the processes started from here)."""
    import uuid

    return os.environ.setdefault(SESSION_VARIABLE, uuid.uuid4().hex[:12])


def finite_only(data: Any) -> Any:
    """`data` with every NaN / Infinity replaced by None: strict JSON parsers reject those tokens."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_only(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_only(value) for value in data]
    return data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def replaced_atomically(path: Path) -> Iterator[BinaryIO]:
    """A temp file beside `path`, renamed onto it once written: a reader (or a run killed mid-write, or a
    full disk) never leaves half a file under the final name. The file gets the mode a plain open() would
    give (0o666 less the umask), like the images, not mkstemp's 0o600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # PIL and json name no file: say which one could not be written
        raise


def write_json_atomic(path: Path, data: Any, strict: bool = False) -> None:
    """Write JSON atomically (see replaced_atomically). `strict`: non-finite floats become null (run.json);
    otherwise they are written as JSON's Infinity / NaN tokens, which Python's json reads back (the sweep
    summary's PSNR of identical images is infinite)."""
    if strict:
        data = finite_only(data)
    text = json.dumps(data, indent=2, default=str, allow_nan=not strict) + "\n"
    with replaced_atomically(path) as handle:
        handle.write(text.encode("utf-8"))


def slugify(prompt: str) -> str:
    """A short, filesystem-safe name from a prompt: ASCII letters, digits and '-' only, never empty."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:SLUG_MAX_CHARS].rstrip("-") or "prompt"


def image_filename(index: int, prompt: str) -> str:
    return f"{index:05d}_{slugify(prompt)}.png"


def save_image(image: Image.Image, images_dir: Path, index: int, prompt: str, seed: int, model_id: str) -> str:
    """Save one PNG (atomically) with prompt, seed and model id as text chunks; returns the path relative to
    the run. The images folder is made here, but never the run folder above it (gone: an error, not a new one)."""
    images_dir.mkdir(exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", prompt)
    info.add_text("seed", str(seed))
    info.add_itxt("model", model_id)
    info.add_text("software", "diffgentor")
    name = image_filename(index, prompt)
    with replaced_atomically(images_dir / name) as handle:
        image.save(handle, format="PNG", pnginfo=info)
    return f"{IMAGES_DIR}/{name}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    if not (repo / ".git").exists():  # an installed package (site-packages) is no checkout: no commit to name
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: The optional packages that decide which kernels an optimization ran (pip names; read from their metadata,
#: never imported: importing flash-attn or triton costs seconds and can fail where the version is still useful).
KERNEL_PACKAGES = ("flash-attn", "flash_attn_3", "sageattention", "xformers", "triton", "kernels", "cache-dit",
                   "DeepCache")


def environment(device: str) -> dict:
    """Versions and hardware that a reader needs to compare this run with another."""
    import torch

    from diffgentor.accelerator import gpu_facts

    gpu = gpu_facts(device)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "hydra": _version("hydra-core"),
        "diffgentor": _version("diffgentor"),
        "host": platform.node(),
        "session": session_id(),
        "pid": os.getpid(),
        "device": device,
        "device_name": gpu["name"] if gpu else _cpu_name(),
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "kernel_packages": {package: _version(package) for package in KERNEL_PACKAGES},
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }


RESERVE_FILE = ".diffgentor.reserve"


def record_size_bound(prompts: list[str]) -> int:
    """Bytes that run.json may need at most for these images: what the run reserves on disk. 64 KiB for the
    rest of the record (config, environment, evidence: ~10 KiB measured), and per image its entry (~200
    bytes) with the prompt escaped as JSON at worst (6 bytes per UTF-8 byte)."""
    return 64 * 1024 + sum(256 + 6 * len(prompt.encode("utf-8")) for prompt in prompts)


class RunFolderGoneError(DiffgentorError):
    """The run folder was removed while the run wrote into it."""


class RunRecord:
    """run.json for one run, rewritten atomically at each milestone so a crash leaves a readable record.

    `reserve_bytes`: disk space held (a file of zeros beside run.json) from the start, and released only to
    write the final record: on a disk that fills up mid-run, the run still ends with a record saying
    "failed: No space left on device" and listing every image that was fully written."""

    def __init__(self, run_dir: Path, data: dict, reserve_bytes: int = 0):
        self.path = run_dir / RUN_FILE
        self.reserve = run_dir / RESERVE_FILE
        self.data = {"status": "running", **data}
        self.data.setdefault("images", [])
        self.data.setdefault("optimizations", [])
        if reserve_bytes:
            try:
                self._hold(reserve_bytes)
            except OSError as exc:  # too little space to even hold the record: say so there if it fits
                if exc.errno in NO_SPACE:
                    with contextlib.suppress(OSError):
                        self.finish("failed", error=f"OSError: {exc.strerror}: could not reserve "
                                                    f"{reserve_bytes} bytes for this run's record")
                raise
        self.save()

    def _hold(self, size: int) -> None:
        fd = os.open(self.reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            self.reserve.unlink(missing_ok=True)
            exc.filename = exc.filename or str(self.reserve)
            raise
        finally:
            os.close(fd)

    def save(self) -> None:
        if not self.path.parent.is_dir():
            raise RunFolderGoneError(f"{self.path.parent}: the run folder was removed while the run wrote into "
                                     "it; nothing more can be recorded there")
        write_json_atomic(self.path, self.data, strict=True)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        """The last save; a full disk gets the reserved space back for it."""
        self.data["status"] = status
        if error is not None:
            self.data["error"] = error
        try:
            try:
                self.save()
            except OSError as exc:
                if exc.errno not in NO_SPACE or not self.reserve.exists():
                    raise
                self.reserve.unlink()
                self.save()
        finally:
            self.reserve.unlink(missing_ok=True)
