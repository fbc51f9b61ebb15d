"""A run as users make it: `python -m diffgentor` end to end, its files, its errors, its determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import diffgentor.generate as generate_module
from diffgentor.errors import ConfigError, ModelLoadError
from diffgentor.run import execute

from conftest import run_cli

RUN_KEYS = {"status", "config", "overrides", "environment", "images", "timings", "memory", "optimizations"}


def _single_run_dir(root: Path) -> Path:
    records = list(root.glob("outputs/*/*/run.json"))
    assert len(records) == 1, records
    return records[0].parent


def test_python_m_diffgentor_writes_images_and_record(tmp_path, testbed_cache):
    result = run_cli(["steps=2", "num_images_per_prompt=2", "batch_size=2"], tmp_path,
                     testbed_cache=testbed_cache)
    assert result.returncode == 0, result.stderr
    run_dir = _single_run_dir(tmp_path)
    assert f"wrote 2 images to {run_dir / 'images'}" in result.stdout

    data = json.loads((run_dir / "run.json").read_text())
    assert RUN_KEYS <= set(data)
    assert data["status"] == "ok"
    assert data["config"]["model"]["name"] == "shapes-flux"
    assert "steps=2" in data["overrides"]
    env = data["environment"]
    for key in ("python", "torch", "diffusers", "transformers", "hydra", "device_name", "cpu"):
        assert env[key], key
    timings = data["timings"]
    for key in ("load_s", "optimize_s", "warmup_s", "images_per_s", "s_per_step"):
        assert timings[key] >= 0, key
    assert timings["latency_s"]["min"] <= timings["latency_s"]["median"] <= timings["latency_s"]["max"]
    assert data["memory"]["peak_bytes"] > 0
    assert [o["name"] for o in data["optimizations"]] == ["tf32"]

    assert [(i["seed"], i["prompt"]) for i in data["images"]] == [(0, data["config"]["prompt"])] * 1 + [
        (1, data["config"]["prompt"])]
    for image in data["images"]:
        path = run_dir / image["file"]
        png = Image.open(path)
        assert png.size == (64, 64)
        assert png.text["seed"] == str(image["seed"])
        assert png.text["model"] == "diffgentor-testbed/shapes-flux"


def test_same_config_and_seed_give_identical_pixels(tmp_path, make_config):
    cfg = make_config(["steps=2", "seed=3"])
    first = execute(cfg, tmp_path / "a", [])
    second = execute(cfg, tmp_path / "b", [])
    a = np.asarray(Image.open(tmp_path / "a" / first["images"][0]["file"]))
    b = np.asarray(Image.open(tmp_path / "b" / second["images"][0]["file"]))
    assert np.array_equal(a, b)
    other = execute(make_config(["steps=2", "seed=4"]), tmp_path / "c", [])
    c = np.asarray(Image.open(tmp_path / "c" / other["images"][0]["file"]))
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-qwenimage"])
def test_every_testbed_family_runs(tmp_path, make_config, model):
    data = execute(make_config([f"model={model}", "steps=2"]), tmp_path, [])
    assert data["status"] == "ok" and len(data["images"]) == 1
    assert data["model"]["family"] == model.removeprefix("tiny-")


def test_qwenimage_negative_prompt_turns_on_true_cfg(tmp_path, make_config, monkeypatch):
    """QwenImage runs classifier-free guidance as a second denoiser call per step, only given a negative prompt."""
    from diffusers import QwenImageTransformer2DModel

    calls = []
    forward = QwenImageTransformer2DModel.forward
    monkeypatch.setattr(QwenImageTransformer2DModel, "forward", lambda self, *a, **k: calls.append(1) or
                        forward(self, *a, **k))
    one_call = ["model=tiny-qwenimage", "steps=2", "benchmark.warmup=0", "benchmark.min_timed_calls=1"]
    plain = execute(make_config(one_call), tmp_path / "a", [])
    plain_calls, calls[:] = len(calls), []
    cfg = execute(make_config([*one_call, "negative_prompt=blurry"]), tmp_path / "b", [])
    assert plain["status"] == cfg["status"] == "ok"
    assert plain_calls == 2 and len(calls) == 2 * plain_calls


def test_prompts_file_jsonl_seeds_recorded(tmp_path, make_config):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red square", "seed": 11}\n{"prompt": "a blue star"}\n')
    data = execute(make_config(["steps=2", f"prompts_file={prompts}", "seed=100"]), tmp_path / "run", [])
    assert [(i["prompt"], i["seed"]) for i in data["images"]] == [("a red square", 11), ("a blue star", 101)]
    assert [i["file"] for i in data["images"]] == ["images/00000_a-red-square.png", "images/00001_a-blue-star.png"]


def test_warmup_and_repeats_are_counted(tmp_path, make_config):
    data = execute(make_config(["steps=2", "benchmark.warmup=1", "benchmark.repeats=3"]), tmp_path, [])
    assert data["timings"]["latency_s"]["n"] == 3
    assert data["timings"]["warmup_passes"] == 1 and data["timings"]["warmup_s"] > 0


def test_min_timed_calls_gives_every_latency_a_spread(tmp_path, make_config):
    """Two batches of one image and the default benchmark.min_timed_calls=3: each batch is timed twice."""
    data = execute(make_config(["steps=1", "num_images_per_prompt=2", "batch_size=1", "benchmark.warmup=0"]),
                   tmp_path, [])
    assert data["timings"]["repeats"] == 2 and data["timings"]["latency_s"]["n"] == 4
    assert len(data["images"]) == 2
    assert data["environment"]["host"] and len(data["environment"]["session"]) == 12


def test_failure_midway_keeps_finished_images(tmp_path, make_config, monkeypatch):
    real = generate_module.run_batch
    calls = {"n": 0}

    def flaky(pipe, batch, settings):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out of memory")
        return real(pipe, batch, settings)

    monkeypatch.setattr(generate_module, "run_batch", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        execute(make_config(["steps=2", "num_images_per_prompt=3", "benchmark.warmup=0"]), tmp_path, [])
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "failed"
    assert "simulated out of memory" in data["error"]
    assert len(data["images"]) == 1
    assert (tmp_path / data["images"][0]["file"]).is_file()


@pytest.mark.parametrize(
    "overrides, error, message",
    [
        (["height=60"], ConfigError, "height=60: this pipeline needs height and width that are multiples of 8"),
        (["model.path=/no/such/dir"], ModelLoadError, "no such folder"),
        (["prompts_file=/no/such.txt"], ConfigError, "file not found"),
        (["prompt= "], ConfigError, "prompt is empty"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, make_config, overrides, error, message):
    with pytest.raises(error, match=message):
        execute(make_config(overrides), tmp_path, [])


def test_folder_without_model_index_is_refused(tmp_path, make_config):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        execute(make_config([f"model.path={tmp_path}"]), tmp_path / "run", [])


def test_local_folder_loads_through_model_path(tmp_path, make_config, testbed_cache):
    from diffgentor.testbed import materialize

    folder = materialize("tiny-sd", testbed_cache)
    data = execute(make_config([f"model.path={folder}", "steps=2"]), tmp_path, [])
    assert data["model"]["family"] == "sd" and data["model"]["pipeline_class"] == "StableDiffusionPipeline"


def test_unknown_hub_id_offline_is_one_line(tmp_path, testbed_cache):
    result = run_cli(["model.path=nobody/no-such-model", "model.family=flux"], tmp_path,
                     env={"HF_HUB_OFFLINE": "1"}, testbed_cache=testbed_cache)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: could not load hub model nobody/no-such-model")
    data = json.loads(next(tmp_path.glob("outputs/*/*/run.json")).read_text())
    assert data["status"] == "failed"


@pytest.mark.parametrize("error_class, reason", [
    ("GatedRepoError", "the repository is gated; accept its licence"),
    ("RepositoryNotFoundError", "no such repository, or it is private"),
])
def test_a_gated_or_missing_hub_repo_says_what_to_do(error_class, reason, make_config, tmp_path, monkeypatch):
    """The hub's answer, as diffusers' real download path wraps it (an EnvironmentError about the cache)."""
    import diffusers.pipelines.pipeline_utils as pipeline_utils
    import huggingface_hub.errors as hub_errors
    from huggingface_hub.errors import HfHubHTTPError

    http = __import__(HfHubHTTPError.__mro__[1].__module__.split(".")[0])  # the hub's HTTP client (httpx2)
    response = http.Response(401, request=http.Request("GET", "https://huggingface.co/api/models/org/model"))

    def refuse(repo_id, **kwargs):
        raise getattr(hub_errors, error_class)(f"401 for {repo_id}", response=response)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(pipeline_utils, "model_info", refuse)
    with pytest.raises(ModelLoadError) as failed:
        execute(make_config(["model.path=org/model", "model.family=flux"]), tmp_path / "run", [])
    assert str(failed.value).startswith(f"could not load hub model org/model: {reason}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["prompts_file=missing.txt"], "error: prompts_file=missing.txt: file not found"),
        (["height=65"], "error: height=65"),
        (["model.path=./nowhere"], "error: model.path=./nowhere: no such folder"),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, testbed_cache, args, message):
    result = run_cli(args, tmp_path, testbed_cache=testbed_cache)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message)


def test_hydra_full_error_shows_the_traceback(tmp_path, testbed_cache):
    result = run_cli(["prompts_file=missing.txt"], tmp_path, env={"HYDRA_FULL_ERROR": "1"},
                     testbed_cache=testbed_cache)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_dry_run_prints_plan_and_loads_nothing(tmp_path, testbed_cache):
    result = run_cli(["dry_run=true"], tmp_path, testbed_cache=testbed_cache)
    assert result.returncode == 0, result.stderr
    assert "plan for a 'flux' pipeline" in result.stdout and "tf32" in result.stdout
    assert not list(tmp_path.glob("outputs/*/*/run.json"))
