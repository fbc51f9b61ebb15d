"""What a run leaves behind: run.json (written atomically, status first "running" then "ok"/"failed"),
the environment it ran in, and images named and tagged so they can be traced back to prompt and seed."""

from __future__ import annotations

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
from typing import Any

from PIL import Image, PngImagePlugin

RUN_FILE = "run.json"
IMAGES_DIR = "images"
SLUG_MAX_CHARS = 48


def finite_only(data: Any) -> Any:
    """`data` with every NaN / Infinity replaced by None: strict JSON parsers reject those tokens."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_only(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite_only(value) for value in data]
    return data


def write_json_atomic(path: Path, data: Any, strict: bool = False) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file. `strict`:
    non-finite floats become null (run.json); otherwise they are written as JSON's Infinity / NaN tokens,
    which Python's json reads back (the sweep summary's PSNR of identical images is infinite)."""
    if strict:
        data = finite_only(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2, default=str, allow_nan=not strict)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def slugify(prompt: str) -> str:
    """A short, filesystem-safe name from a prompt: ASCII letters, digits and '-' only, never empty."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:SLUG_MAX_CHARS].rstrip("-") or "prompt"


def image_filename(index: int, prompt: str) -> str:
    return f"{index:05d}_{slugify(prompt)}.png"


def save_image(image: Image.Image, images_dir: Path, index: int, prompt: str, seed: int, model_id: str) -> str:
    """Save one PNG with prompt, seed and model id as text chunks; returns the path relative to the run."""
    images_dir.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_itxt("prompt", prompt)
    info.add_text("seed", str(seed))
    info.add_itxt("model", model_id)
    info.add_text("software", "diffgentor")
    name = image_filename(index, prompt)
    image.save(images_dir / name, pnginfo=info)
    return f"{IMAGES_DIR}/{name}"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
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


def environment(device: str) -> dict:
    """Versions and hardware that a reader needs to compare this run with another."""
    import torch

    cuda = torch.cuda.is_available()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "accelerate": _version("accelerate"),
        "hydra": _version("hydra-core"),
        "diffgentor": _version("diffgentor"),
        "device": device,
        "device_name": torch.cuda.get_device_name() if cuda and device.startswith("cuda") else _cpu_name(),
        "cuda": torch.version.cuda,
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }


class RunRecord:
    """run.json for one run, rewritten atomically at each milestone so a crash leaves a readable record."""

    def __init__(self, run_dir: Path, data: dict):
        self.path = run_dir / RUN_FILE
        self.data = {"status": "running", **data}
        self.data.setdefault("images", [])
        self.data.setdefault("optimizations", [])
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data, strict=True)

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.save()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["status"] = status
        if error is not None:
            self.data["error"] = error
        self.save()
