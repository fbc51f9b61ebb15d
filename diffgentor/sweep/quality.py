"""Quality against the baseline's image for the same prompt and seed, with torchmetrics: PSNR pooled over the
images, SSIM mean, LPIPS where its weights are on this machine."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from diffgentor.sweep.jobs import Job


def image_keys(job: Job) -> dict[tuple, Path]:
    """(prompt, seed, n-th occurrence) -> image path, for the images the job finished."""
    keys: dict[tuple, Path] = {}
    for image in job.record.get("images", []):
        base = (image.get("prompt"), image.get("seed"))
        occurrence = sum(1 for key in keys if key[:2] == base)
        keys[(*base, occurrence)] = job.folder / image["file"]
    return keys


def read_pixels(path: Path) -> Any:
    """The image as an RGB uint8 array, or None when it is missing or not a readable image."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):  # missing, truncated, not an image
        return None


def decoded_images(job: Job) -> dict[tuple, Any]:
    """(prompt, seed, n-th occurrence) -> the job's image as an RGB array, decoded once for the whole
    summary; None for a listed image that is gone or unreadable (counted as images_missing)."""
    return {key: read_pixels(path) for key, path in image_keys(job).items()}


def _stack(arrays: list) -> Any:
    """uint8 tensor (N, 3, H, W)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


class Lpips:
    """LPIPS (torchmetrics, AlexNet) when torchvision and the backbone weights are on this machine; the
    reason otherwise. Nothing is downloaded: the weights must already be in the torch hub cache."""

    def __init__(self) -> None:
        self.metric: Any = None
        try:
            import torch
            import torchvision
        except ImportError:
            self.note = "n/a: LPIPS needs torchvision, which is not installed"
            return
        weights = torchvision.models.AlexNet_Weights.DEFAULT
        local = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not local.is_file():
            self.note = f"n/a: the LPIPS backbone weights are not on this machine ({local})"
            return
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        self.metric = LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True)
        self.note = "LPIPS: torchmetrics LearnedPerceptualImagePatchSimilarity (AlexNet), mean over images"

    def __call__(self, preds: Any, target: Any) -> Optional[float]:
        if self.metric is None:
            return None
        self.metric.reset()
        return float(self.metric(preds.float() / 255, target.float() / 255))


def quality(ours: dict[tuple, Any], theirs: dict[tuple, Any], lpips: Lpips) -> dict:
    """PSNR (dB, pooled MSE over all matched images), SSIM and LPIPS (means) of a job's images (`ours`, from
    decoded_images) against the baseline's (`theirs`) for the same prompt and seed; `identical`: every matched
    image equal to the baseline's, pixel for pixel. Pairs with a missing side are left out (images_missing)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    empty = {"psnr_db": None, "ssim": None, "lpips": None, "identical": None, "quality_pairs": 0}
    pairs = [(ours[key], theirs[key]) for key in theirs
             if ours.get(key) is not None and theirs[key] is not None]
    if not pairs or any(a.shape != b.shape for a, b in pairs) or len({a.shape for a, _ in pairs}) > 1:
        return empty
    preds, target = _stack([a for a, _ in pairs]), _stack([b for _, b in pairs])
    p, t = preds.float() / 255, target.float() / 255
    return {
        "psnr_db": float(peak_signal_noise_ratio(p, t, data_range=1.0)),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=1.0)),
        "lpips": lpips(preds, target),
        "identical": bool((preds == target).all()),
        "quality_pairs": len(pairs),
    }
