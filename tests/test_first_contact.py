"""What a new user meets first: threads, a quiet console with a useful log, readable job folders, a record of
refusals, and the generation flags FLUX users pass."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import diffgentor.run as run_module
from diffgentor.errors import ConfigError, RefusedError
from diffgentor.jobdirs import EXCLUDE_KEY, exclude_constant_overrides, job_dir
from diffgentor.run import execute

SHELL_SAFE = re.compile(r"^[A-Za-z0-9._=-]+$")


def _pixels(run_dir, data) -> np.ndarray:
    return np.asarray(Image.open(run_dir / data["images"][0]["file"]))


def _record(run_dir) -> dict:
    return json.loads((run_dir / "run.json").read_text())


# ---- threads --------------------------------------------------------------------------------------------

def test_threads_setting_is_used_recorded_and_restored(tmp_path, make_config):
    before = torch.get_num_threads()
    data = execute(make_config(["steps=1", "threads=2"]), tmp_path / "two", [])
    assert data["threads"] == {"requested": 2, "used": 2, "source": "threads setting"}
    assert data["environment"]["torch_threads"] == 2
    assert torch.get_num_threads() == before  # the next job of a multirun starts from the process's count

    data = execute(make_config(["steps=1"]), tmp_path / "env", [])
    assert data["threads"] == {"requested": None, "used": int(os.environ["OMP_NUM_THREADS"]),
                               "source": "OMP_NUM_THREADS"}


def test_threads_below_one_is_refused_before_load(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(run_module, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(ConfigError, match=r"threads=0: must be >= 1; give a count >= 1"):
        execute(make_config(["threads=0"]), tmp_path, [])
    record = _record(tmp_path)
    assert record["status"] == "refused" and "threads=0" in record["reasons"][0]


# ---- refusals leave a record ----------------------------------------------------------------------------

def test_refused_run_records_every_reason(tmp_path, make_config):
    cfg = make_config(["+memory=model_cpu_offload", "+attention=flash", "device=cpu"])
    with pytest.raises(RefusedError) as refused:
        execute(cfg, tmp_path, ["+memory=model_cpu_offload", "+attention=flash", "device=cpu"])
    record = _record(tmp_path)
    assert record["status"] == "refused"
    assert record["reasons"] == refused.value.reasons and len(record["reasons"]) == 2
    assert [r.split(":")[0] for r in record["reasons"]] == ["attention", "model_cpu_offload"]
    assert record["overrides"] == ["+memory=model_cpu_offload", "+attention=flash", "device=cpu"]
    assert record["config"]["memory"]["name"] == "model_cpu_offload"
    assert not (tmp_path / "images").exists()


# ---- pass-through generation arguments ------------------------------------------------------------------

def test_true_cfg_scale_and_max_sequence_length_reach_the_pipeline(tmp_path, make_config):
    base = ["steps=4", "negative_prompt='a green star on a yellow background'"]
    plain = execute(make_config(base), tmp_path / "plain", [])
    cfg = execute(make_config([*base, "true_cfg_scale=4.0"]), tmp_path / "cfg", [])
    shorter = execute(make_config([*base, "max_sequence_length=64"]), tmp_path / "len", [])
    reference = _pixels(tmp_path / "plain", plain)
    assert not np.array_equal(reference, _pixels(tmp_path / "cfg", cfg))  # true CFG ran a negative branch
    assert not np.array_equal(reference, _pixels(tmp_path / "len", shorter))  # T5 length 64, not the entry's 72
    assert cfg["config"]["true_cfg_scale"] == 4.0 and shorter["config"]["max_sequence_length"] == 64


def test_an_argument_the_pipeline_does_not_take_is_refused_before_load(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(run_module, "load_pipeline", lambda *a, **k: pytest.fail("loaded weights"))
    with pytest.raises(ConfigError, match="max_sequence_length=77: StableDiffusionPipeline takes no "
                                          "max_sequence_length; remove it"):
        execute(make_config(["model=tiny-sd", "max_sequence_length=77"]), tmp_path, [])
    assert _record(tmp_path)["status"] == "refused"


# ---- job folder names -----------------------------------------------------------------------------------

@pytest.mark.parametrize("num, dirname, expected", [
    (3, "+cache=pab", "003-cache=pab"),
    (0, "", "000"),
    (12, "+cache=first_block_cache__cache.threshold=0.3__progress=false", "012-cache=first_block_cache__cache.threshold=0.3"),
    (1, "prompt='a b,c'__resume=true", "001-prompt=_a_b_c"),
    (1000, "~compile", "1000-compile"),
])
def test_job_folder_names_are_short_and_shell_safe(num, dirname, expected):
    name = job_dir(num, dirname)
    assert name == expected and SHELL_SAFE.match(name)


def test_constant_overrides_are_left_out_of_a_multirun_only():
    argv = ["-m", "+cache=none,pab", "model=shapes-flux", "+experiment=cache_methods", "hydra.sweep.dir=x"]
    assert exclude_constant_overrides(argv) == [*argv, f"{EXCLUDE_KEY}=[experiment,model]"]
    assert exclude_constant_overrides(argv[1:]) == argv[1:]  # not a multirun
    own = [*argv, f"{EXCLUDE_KEY}=[seed]"]
    assert exclude_constant_overrides(own) == own  # the user's own choice wins


# ---- the console and the log, as a user sees them -------------------------------------------------------

def _diffgentor(args, cwd, testbed_cache):
    return subprocess.run([sys.executable, "-m", "diffgentor", *args, f"cache_dir={testbed_cache}"], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_sweep_is_quiet_and_its_folders_say_what_varies(tmp_path, testbed_cache):
    sweep = tmp_path / "sweep"
    result = _diffgentor(["-m", "+cache=none,first_block_cache", "model=shapes-flux", "steps=4",
                          "benchmark.warmup=0", f"hydra.sweep.dir={sweep}"], tmp_path, testbed_cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["000-cache=none", "001-cache=first_block_cache"]
    for noise in ("Loading pipeline components", "Loading weights", "torchvision", "experimental", "it/s"):
        assert noise not in result.stderr, noise  # no library notices, no per-step bars
    assert result.stderr.count("images: 100%") >= 2  # one image bar per job
    log = (sweep / "000-cache=none" / "diffgentor.log").read_text()
    assert "plan: tf32" in log and "run ok: 1 images" in log
    assert "torchvision" in log  # the library's notice is kept, in the log

    quiet = _diffgentor(["steps=2", "progress=false", "hydra.run.dir=quiet"], tmp_path, testbed_cache)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
