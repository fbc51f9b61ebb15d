"""Image quality of a run's images against others for the same prompt and seed, with torchmetrics: PSNR pooled
over the images, SSIM mean, LPIPS where its weights are on this machine; per image too. Used by the sweep
summary (against the baseline job) and by a run's reference quality (reference.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional


def read_pixels(path: Path) -> Any:
    """The image as an RGB uint8 array, or None when it is missing or not a readable image."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):  # missing, truncated, not an image
        return None


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
    """PSNR (dB, pooled MSE over all matched images), SSIM and LPIPS (means) of a run's images (`ours`: key ->
    RGB array) against others for the same prompt and seed (`theirs`: the baseline job's, or the references);
    `identical`: every matched image equal to the other, pixel for pixel. Pairs with a missing side are left
    out (images_missing)."""
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


def per_image_quality(ours: dict, theirs: dict) -> dict:
    """key -> {psnr_db, ssim, identical} of each pair with both sides (the pooled numbers are quality's)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    keys = [key for key in theirs if ours.get(key) is not None and theirs[key] is not None
            and ours[key].shape == theirs[key].shape]
    if not keys:
        return {}
    preds, target = _stack([ours[k] for k in keys]), _stack([theirs[k] for k in keys])
    p, t = preds.float() / 255, target.float() / 255
    psnr = peak_signal_noise_ratio(p, t, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(p, t, data_range=1.0, reduction="none")
    return {key: {"psnr_db": float(psnr[i]), "ssim": float(ssim[i]), "identical": bool((preds[i] == target[i]).all())}
            for i, key in enumerate(keys)}
