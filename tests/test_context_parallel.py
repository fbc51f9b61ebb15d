"""Context parallelism (`+parallel=ulysses`) under torchrun: 2 gloo ranks split each image of the tiny FLUX
and Qwen-Image testbeds and give the single-process images; every case it cannot serve is refused before
load, with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffgentor.config import resolve_config
from diffgentor.errors import DiffgentorError
from diffgentor.run import execute, prepare

from conftest import REPO
from test_distributed import _pixels, _torchrun

COMMON = ["steps=2", "benchmark.min_timed_calls=1", "progress=false", "threads=1"]


@pytest.mark.parametrize("model", ["tiny-flux", "tiny-qwenimage"])
def test_ulysses_on_two_ranks_gives_the_single_process_images(model, tmp_path, testbed_cache, make_config):
    args = [f"model={model}", *COMMON, "prompt=a red circle"]
    execute(make_config(args), tmp_path / "single", args)
    result = _torchrun(["-m", "diffgentor"], [*args, "+parallel=ulysses", "hydra.run.dir=split"], tmp_path,
                       testbed_cache)
    assert result.returncode == 0, result.stderr
    expected, got = _pixels(tmp_path / "single"), _pixels(tmp_path / "split")
    assert list(got) == list(expected) and len(got) == 1
    # the ranks sum attention in another order: equal up to float rounding, at most one 8-bit level
    assert all(np.abs(got[n].astype(int) - expected[n].astype(int)).max() <= 1 for n in expected)
    record = json.loads((tmp_path / "split" / "run.json").read_text())
    parallel = record["distributed"]
    assert record["status"] == "ok" and parallel["mode"] == "context_parallel" and len(record["images"]) == 1
    assert [r["images"] for r in parallel["ranks"]] == [1, 1]  # both ranks made the one image
    evidence = next(o for o in record["optimizations"] if o["name"] == "context_parallel")
    assert evidence["params"]["uneven_shards"] is (model == "tiny-qwenimage")
    tokens = evidence["evidence"]
    assert tokens["image_tokens_per_rank"] * 2 == tokens["image_tokens"] == 16  # 64x64: 4x4 packed latents
    assert not (tmp_path / "split" / "ranks" / "rank1" / "images").exists()  # rank 0 alone writes the images
    assert isinstance(Image.open(tmp_path / "split" / record["images"][0]["file"]), Image.Image)


def _refusals(make_config, overrides: list[str]) -> str:
    model = [] if any(o.startswith("model=") for o in overrides) else ["model=tiny-flux"]
    prepared = prepare(resolve_config(make_config([*model, *overrides])))
    with pytest.raises(DiffgentorError) as raised:
        prepared.plan.raise_if_refused()
    return str(raised.value)


@pytest.mark.parametrize("world, overrides, reason", [
    (2, ["+parallel=ring"], "log-sum-exp, which the native backend does not return"),
    (2, ["+parallel=ulysses", "+attention=_native_math"], "no context-parallel support in diffusers"),
    (2, ["+parallel=ulysses", "parallel.degree=4"], "the degree must be the world size"),
    (2, ["+parallel=ulysses", "+cache=first_block_cache"], "a cache with context parallelism is not tested"),
    (2, ["+parallel=ulysses", "+compile=regional"], "torch.compile with context parallelism is not tested"),
    (2, ["+parallel=ulysses", "height=48", "width=48"], "9 image tokens do not split evenly"),
    (2, ["+parallel=ulysses", "max_sequence_length=63"], "63 text tokens do not split evenly"),
    (4, ["+parallel=ulysses"], "the denoiser's 2 attention heads do not divide among the ranks"),
    (2, ["+parallel=ulysses", "model=tiny-sd"], "does not apply to 'sd' pipelines"),
])
def test_what_cannot_be_split_is_refused_before_load(world, overrides, reason, make_config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", str(world))
    assert reason in _refusals(make_config, overrides)


def test_a_single_process_is_told_to_launch_with_torchrun(make_config, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert "launch it with `torchrun --nproc_per_node=2" in _refusals(make_config, ["+parallel=ulysses"])


def test_a_rank_failing_mid_image_fails_the_run_at_once_and_keeps_the_images(tmp_path, testbed_cache):
    """Its peer waits in a collective the failed rank never joins: the failed rank leaves, which breaks it."""
    result = _torchrun([str(REPO / "tests" / "rank_failure_driver.py")],
                       ["model=tiny-flux", *COMMON, "num_images_per_prompt=3", "benchmark.warmup=0",
                        "+parallel=ulysses", "hydra.run.dir=run"], tmp_path, testbed_cache)
    assert result.returncode != 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and record["error"].startswith("rank 1 of 2: RuntimeError: rank 1 ran out")
    # both ranks made image 0 together; rank 1's second call failed
    assert [i["file"] for i in record["images"]] == [f"images/{name}" for name in _pixels(tmp_path / "run")]
    assert len(record["images"]) == 1 and "error: rank 1 of 2" in result.stderr
