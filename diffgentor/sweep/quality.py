"""The images of a sweep's jobs, keyed by prompt, seed and occurrence, for comparing a job with the baseline
(the metrics are image_quality.py's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffgentor.image_quality import read_pixels
from diffgentor.sweep.jobs import Job


def image_keys(job: Job) -> dict[tuple, Path]:
    """(prompt, seed, n-th occurrence) -> image path, for the images the job finished."""
    keys: dict[tuple, Path] = {}
    for image in job.record.get("images", []):
        base = (image.get("prompt"), image.get("seed"))
        occurrence = sum(1 for key in keys if key[:2] == base)
        keys[(*base, occurrence)] = job.folder / image["file"]
    return keys


def decoded_images(job: Job) -> dict[tuple, Any]:
    """(prompt, seed, n-th occurrence) -> the job's image as an RGB array, decoded once for the whole
    summary; None for a listed image that is gone or unreadable (counted as images_missing)."""
    return {key: read_pixels(path) for key, path in image_keys(job).items()}
