"""The run's device by its index: syncs, peak memory and facts read on the device the run uses (`cuda:1` is
not the current device unless set), and the per-job cleanup that lets the next job of a process start as a
fresh process would."""

from __future__ import annotations

import gc
import resource
import sys
from pathlib import Path
from typing import Optional

import torch

NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def synchronize(device: str) -> None:
    """Wait for the run's device (only its own queue: a sync on device 0 would not wait for cuda:1)."""
    if is_cuda(device):
        torch.cuda.synchronize(torch.device(device))
    elif device == "mps":
        torch.mps.synchronize()


def reset_peak_memory(device: str) -> None:
    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


def peak_memory(device: str) -> dict:
    """CUDA: max allocated on the run's device since the reset before generation. CPU: the process's peak
    RSS (includes load)."""
    if is_cuda(device):
        return {"peak_bytes": int(torch.cuda.max_memory_allocated(torch.device(device))),
                "kind": "cuda_max_memory_allocated"}
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_bytes": int(rss_kib) * 1024, "kind": "process_peak_rss"}


def gpu_facts(device: str) -> Optional[dict]:
    """Name, memory, compute capability and driver of the run's GPU (None off CUDA): what makes two runs'
    timings comparable or not."""
    if not (is_cuda(device) and torch.cuda.is_available()):
        return None
    props = torch.cuda.get_device_properties(torch.device(device))
    return {"name": props.name, "total_memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}", "driver": nvidia_driver_version()}


def nvidia_driver_version() -> Optional[str]:
    """The kernel driver's version, as nvidia-smi shows it (read from the driver's own file on Linux; no
    NVML binding needed)."""
    try:
        text = NVIDIA_DRIVER_FILE.read_text()
    except OSError:
        return None
    for word in text.split():
        if word[:1].isdigit() and "." in word:
            return word
    return None


def end_of_job_cleanup(device: str) -> None:
    """Between jobs of one process: drop dynamo's compiled code (otherwise job N's modules, new instances of
    the same classes, count as recompiles of job 1's code and meet the recompile limit after a few jobs),
    collect garbage and return cached device memory, so the next job measures as a fresh process would."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if is_cuda(device) and torch.cuda.is_available():
        torch.cuda.empty_cache()
