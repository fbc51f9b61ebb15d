"""The run's device by its index, TF32 through torch's current API, and the per-job cleanup (issue 11, item 5).

No CUDA here: the CUDA paths are checked by what they call (torch.cuda's functions replaced by recorders),
the cleanup and the TF32 switches by their real effect."""

from __future__ import annotations

import pytest
import torch

from diffgentor import accelerator
from diffgentor.optimize import precision


@pytest.fixture
def cuda_calls(monkeypatch):
    """torch.cuda as a 2-GPU machine would answer, recording the device each call named."""
    calls: list[tuple[str, object]] = []

    class Props:
        name, total_memory, major, minor = "NVIDIA H200", 150_000_000_000, 9, 0

    def recorder(name, result=None):
        return lambda device=None: calls.append((name, device)) or result

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", recorder("synchronize"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", recorder("reset_peak_memory_stats"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", recorder("max_memory_allocated", 123))
    monkeypatch.setattr(torch.cuda, "get_device_properties", recorder("get_device_properties", Props))
    monkeypatch.setattr(torch.cuda, "get_device_capability", recorder("get_device_capability", (9, 0)))
    return calls


def test_cuda_n_is_synced_reset_and_read_on_device_n(cuda_calls):
    from diffgentor.optimize.compile import CallTimer

    accelerator.synchronize("cuda:1")
    accelerator.reset_peak_memory("cuda:1")
    assert accelerator.peak_memory("cuda:1") == {"peak_bytes": 123, "kind": "cuda_max_memory_allocated"}
    facts = accelerator.gpu_facts("cuda:1")
    assert precision.tf32_capable_device("cuda:1")
    timer = CallTimer("cuda:1")
    timer.start()
    timer.stop()
    assert facts["name"] == "NVIDIA H200" and facts["compute_capability"] == "9.0"
    assert facts["total_memory_bytes"] == 150_000_000_000
    assert [name for name, _ in cuda_calls] == ["synchronize", "reset_peak_memory_stats", "max_memory_allocated",
                                                "get_device_properties", "get_device_capability",
                                                "synchronize", "synchronize"]
    assert {device for _, device in cuda_calls} == {torch.device("cuda:1")}


def test_the_driver_version_is_read_from_the_drivers_file(tmp_path, monkeypatch):
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.124.06  Release Build  "
                       "(dvs-builder@U16-I3-B03-4-3)  Tue Feb 25 04:47:31 UTC 2025\n"
                       "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    monkeypatch.setattr(accelerator, "NVIDIA_DRIVER_FILE", version)
    assert accelerator.nvidia_driver_version() == "570.124.06"
    monkeypatch.setattr(accelerator, "NVIDIA_DRIVER_FILE", tmp_path / "absent")
    assert accelerator.nvidia_driver_version() is None


def test_cpu_has_no_gpu_facts_and_reports_the_process_peak():
    assert accelerator.gpu_facts("cpu") is None
    assert accelerator.peak_memory("cpu")["kind"] == "process_peak_rss"


@pytest.fixture
def tf32_state():
    before = precision.tf32_flags()
    yield
    precision.restore_tf32(before)


def test_tf32_uses_torchs_fp32_precision_api_and_restores_what_was_there(tf32_state):
    assert precision.has_fp32_precision_api()  # torch 2.13: the legacy flags are deprecated
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    torch.backends.cudnn.rnn.fp32_precision = "ieee"
    before = precision.tf32_flags()

    on = precision.TF32({"enabled": True})
    on.apply(None)
    assert set(precision.tf32_flags().values()) == {"tf32"}
    on.release()
    assert precision.tf32_flags() == before  # what was there, not merely "off"

    off = precision.TF32({"enabled": False})
    off.apply(None)
    assert set(precision.tf32_flags().values()) == {"ieee"}
    evidence = off.evidence(None)
    assert evidence["effective"] is False and evidence["cudnn.conv.fp32_precision"] == "ieee"
    off.release()
    assert precision.tf32_flags() == before
    # the legacy flags were never touched: torch's matmul precision reads back without a mixed-API error
    assert torch.backends.fp32_precision in ("none", "ieee", "tf32")


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.linear(x).relu()


def _compiled_counts_of_a_job(cleanup: bool) -> dict:
    """One in-process "job": a new module instance compiled the way compile.py compiles a component."""
    from diffgentor.optimize.compile import dynamo_counters

    before = dynamo_counters()
    block = _Block()
    block._compiled_call_impl = torch.compile(block._call_impl, backend="eager")
    with torch.no_grad():
        block(torch.ones(2, 4))
    after = dynamo_counters()
    if cleanup:
        accelerator.end_of_job_cleanup("cpu")
    return {key: after[key] - before[key] for key in ("graphs", "frames_compiled")}


def test_after_the_cleanup_each_jobs_compile_evidence_equals_a_fresh_processs():
    torch._dynamo.reset()
    try:
        # without it, job 2 on reuses job 1's compiled code: no graph of its own, so "compile had no effect"
        assert [_compiled_counts_of_a_job(cleanup=False) for _ in range(3)][1:] == [
            {"graphs": 0, "frames_compiled": 0}] * 2
        torch._dynamo.reset()
        assert [_compiled_counts_of_a_job(cleanup=True) for _ in range(3)] == [
            {"graphs": 1, "frames_compiled": 1}] * 3
    finally:
        torch._dynamo.reset()


def test_a_job_cleans_up_and_its_failure_keeps_no_pipeline_alive(make_config, tmp_path, monkeypatch):
    """Every ending runs the cleanup; a failed job's exception (kept by Hydra with the job's result in a
    multirun) holds no frame that still references the loaded pipeline, so its memory can be freed."""
    import diffgentor.run as run
    from diffusers import DiffusionPipeline

    cleaned: list[str] = []
    real_cleanup = accelerator.end_of_job_cleanup
    monkeypatch.setattr(run, "end_of_job_cleanup", lambda device: cleaned.append(device) or real_cleanup(device))
    assert run.execute(make_config(["model=tiny-sd", "steps=1"]), tmp_path / "ok", [])["status"] == "ok"

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(run, "generate", fail)
    with pytest.raises(RuntimeError, match="boom") as failed:
        run.execute(make_config(["model=tiny-sd", "steps=1"]), tmp_path / "failed", [])
    assert cleaned == ["cpu", "cpu"]
    frames, tb = [], failed.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    held = [frame.f_code.co_name for frame in frames
            if any(isinstance(value, DiffusionPipeline) for value in frame.f_locals.values())]
    assert held == []
