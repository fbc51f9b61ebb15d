"""Data parallel over a run's images with torchrun: 2 gloo ranks on CPU write exactly the single-process
run's images (same names, same pixels) into one folder, and a failing rank fails the run, keeping the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffgentor.distributed import World, rank_device, shard

from conftest import REPO, run_cli

COMMON = ["model=tiny-flux", "steps=2", "benchmark.min_timed_calls=1", "progress=false"]


def _torchrun(target: list[str], args: list[str], cwd: Path, testbed_cache: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *target,
               *args, f"cache_dir={testbed_cache}"]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _pixels(run_dir: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted((run_dir / "images").glob("*.png"))}


def test_two_ranks_write_the_single_process_images(tmp_path, testbed_cache):
    single = run_cli([*COMMON, "num_images_per_prompt=3", "hydra.run.dir=single"], tmp_path,
                     testbed_cache=testbed_cache)
    assert single.returncode == 0, single.stderr
    ranks = _torchrun(["-m", "diffgentor"], [*COMMON, "num_images_per_prompt=3"], tmp_path, testbed_cache)
    assert ranks.returncode == 0, ranks.stderr
    runs = [p.parent for p in (tmp_path / "outputs").glob("*/*/run.json")]
    assert len(runs) == 1, runs  # one folder for both ranks, named by rank 0's clock
    expected, got = _pixels(tmp_path / "single"), _pixels(runs[0])
    assert list(got) == list(expected) and len(got) == 3
    assert all(np.array_equal(got[name], expected[name]) for name in expected)
    record = json.loads((runs[0] / "run.json").read_text())
    assert record["status"] == "ok" and len(record["images"]) == 3
    parallel = record["distributed"]
    assert parallel["world_size"] == 2 and [r["images"] for r in parallel["ranks"]] == [2, 1]
    assert [r["device"] for r in parallel["ranks"]] == ["cpu", "cpu"] and parallel["images_per_s"] > 0
    assert "wrote 3 images" in ranks.stdout and "wrote 1 image" not in ranks.stdout


def test_a_failing_rank_fails_the_run_and_keeps_the_finished_images(tmp_path, testbed_cache):
    result = _torchrun([str(REPO / "tests" / "rank_failure_driver.py")],
                       [*COMMON, "num_images_per_prompt=4", "benchmark.warmup=0", "hydra.run.dir=run"], tmp_path,
                       testbed_cache)
    assert result.returncode != 0
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "failed" and "rank 1 of 2" in record["error"] and "out of luck" in record["error"]
    # rank 0 made images 0 and 2, rank 1 image 1 before its second call failed
    assert sorted(i["file"] for i in record["images"]) == sorted(f"images/{name}" for name in _pixels(tmp_path / "run"))
    assert len(record["images"]) == 3
    assert [r["status"] for r in record["distributed"]["ranks"]] == ["ok", "failed"]


def test_a_multirun_under_torchrun_is_refused_in_one_line(tmp_path):
    result = run_cli(["-m", "+cache=none,pab"], tmp_path, env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert result.returncode == 1
    assert result.stderr.startswith("error: a multirun under torchrun") and result.stderr.count("\n") == 1


def test_jobs_are_dealt_out_once_each_and_each_rank_takes_its_gpu():
    jobs = list(range(7))
    shares = [shard(jobs, World(rank, 3, rank)) for rank in range(3)]
    assert sorted(sum(shares, [])) == jobs and shares[1] == [1, 4]
    assert shard(jobs, None) == jobs
    assert rank_device("cuda", World(1, 2, 1)) == "cuda:1" and rank_device("cpu", World(1, 2, 1)) == "cpu"
    assert rank_device("cuda:3", World(1, 2, 1)) == "cuda:3" and rank_device("cuda", None) == "cuda"


def test_a_testbed_build_missing_a_component_is_never_put_in_place(tmp_path):
    """transformers writes no weights on a torch.distributed rank other than 0: such a build must fail, not
    become the cache every later run loads (under torchrun only rank 0 builds: pipeline.resolve_source)."""
    from diffgentor.testbed.store import _check_every_component_saved

    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "feature_extractor": [None, None]}))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text("{}")
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(RuntimeError, match="wrote nothing for text_encoder"):
        _check_every_component_saved(tmp_path, "tiny-flux")
    (tmp_path / "text_encoder" / "config.json").write_text("{}")
    _check_every_component_saved(tmp_path, "tiny-flux")
