"""Prompt files, seeds, batching, file names and run.json writing: the pieces a run is built from."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from diffgentor.envvars import parse_env_value
from diffgentor.errors import ConfigError
from diffgentor.prompts import PromptSpec, batches, image_jobs, read_prompts_file
from diffgentor.record import RunRecord, image_filename, save_image, slugify, write_json_atomic


def test_txt_prompts_skip_blank_lines(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n\n  a dog  \n")
    assert [s.prompt for s in read_prompts_file(str(path))] == ["a cat", "a dog"]


def test_jsonl_prompts_with_seed_and_negative(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a cat", "seed": 5}\n\n{"prompt": "a dog", "negative_prompt": "blurry"}\n')
    specs = read_prompts_file(str(path))
    assert specs == [PromptSpec("a cat", 5, None), PromptSpec("a dog", None, "blurry")]


def test_csv_prompts(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,seed\na cat,3\na dog,\n")
    assert read_prompts_file(str(path)) == [PromptSpec("a cat", 3), PromptSpec("a dog", None)]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.jsonl", '{"prompt": "ok"}\n{"prompt": "broken"\n', r"p\.jsonl:2: not valid JSON"),
        ("p.jsonl", '{"text": "no prompt key"}\n', r"p\.jsonl:1: needs a non-empty string \"prompt\""),
        ("p.jsonl", '{"prompt": "x", "seed": "7"}\n', r"p\.jsonl:1: \"seed\" must be an integer"),
        ("p.txt", "\n  \n", "contains no prompts"),
        ("p.csv", "text\nhello\n", "'prompt' column"),
        ("p.yaml", "prompt: x\n", "unknown extension"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ConfigError, match=message) as info:
        read_prompts_file(str(path))
    assert "\n" not in str(info.value)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        read_prompts_file(str(tmp_path / "nope.txt"))


def test_seeds_are_base_plus_index_unless_file_gives_one():
    specs = [PromptSpec("a"), PromptSpec("b", seed=100), PromptSpec("c")]
    jobs = image_jobs(specs, images_per_prompt=2, base_seed=10, negative_prompt=None)
    assert [(j.index, j.prompt, j.seed) for j in jobs] == [
        (0, "a", 10), (1, "a", 11), (2, "b", 100), (3, "b", 101), (4, "c", 14), (5, "c", 15)]


def test_batches_respect_size_and_never_mix_negative_prompts():
    specs = [PromptSpec("a"), PromptSpec("b"), PromptSpec("c", negative_prompt="n"), PromptSpec("d")]
    jobs = image_jobs(specs, 1, 0, None)
    assert [[j.prompt for j in b] for b in batches(jobs, 2)] == [["a", "b"], ["c"], ["d"]]
    with pytest.raises(ConfigError, match="batch_size=0"):
        batches(jobs, 0)


@pytest.mark.parametrize("prompt", ["../../etc/passwd", "a/b\\c", "nul\x00byte", "x" * 500, "日本語", "", "...",
                                    "CON", "  spaces  "])
def test_image_names_are_safe(prompt):
    name = image_filename(3, prompt)
    assert name.startswith("00003_") and name.endswith(".png")
    assert "/" not in name and "\\" not in name and "\x00" not in name and ".." not in name
    assert len(name) <= 6 + 48 + 4


def test_slug_keeps_words():
    assert slugify("A small Red circle, on blue!") == "a-small-red-circle-on-blue"


def test_png_carries_prompt_seed_and_model(tmp_path):
    rel = save_image(Image.new("RGB", (8, 8)), tmp_path / "images", 0, "../../etc/passwd", 42, "m/x")
    path = tmp_path / rel
    assert path.parent == tmp_path / "images"
    text = Image.open(path).text
    assert text["prompt"] == "../../etc/passwd" and text["seed"] == "42" and text["model"] == "m/x"


def test_run_record_is_running_then_finished(tmp_path):
    record = RunRecord(tmp_path, {"config": {}})
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    record.finish("failed", error="boom")
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["status"] == "failed" and data["error"] == "boom"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": 2, "c": _Unserialisable()})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


class _Unserialisable:
    def __str__(self):
        raise ValueError("cannot serialise")


@pytest.mark.parametrize(
    "name, raw, default, expected",
    [
        ("DG_FBC_THRESHOLD", "0.3", 0.2, 0.3),
        ("DG_CACHE_INTERVAL", "5", 3, 5),
        ("DG_COMPILE_FULLGRAPH", "TRUE", False, True),
        ("DG_PAB_TIMESTEP_SKIP", "(200, 700)", [100, 800], [200, 700]),
        ("DG_PAB_TIMESTEP_SKIP", "200,700", [100, 800], [200, 700]),
        ("DG_COMPILE_COMPONENTS", "transformer,vae", ["transformer"], ["transformer", "vae"]),
        ("DG_COMPILE_MODE", "default", "max-autotune-no-cudagraphs", "default"),
    ],
)
def test_env_values_parse_to_the_default_type(name, raw, default, expected):
    assert parse_env_value(name, raw, default) == expected


@pytest.mark.parametrize(
    "name, raw, default, message",
    [
        ("DG_FBC_THRESHOLD", "abc", 0.2, "DG_FBC_THRESHOLD='abc' is not a number"),
        ("DG_PAB_TIMESTEP_SKIP", "800", [100, 800], "DG_PAB_TIMESTEP_SKIP='800' needs 2 integers"),
        ("DG_CACHE_INTERVAL", "2.5", 3, "DG_CACHE_INTERVAL='2.5' is not an integer"),
        ("DG_COMPILE_FULLGRAPH", "maybe", False, "DG_COMPILE_FULLGRAPH='maybe' is not a boolean"),
    ],
)
def test_malformed_env_values_name_the_variable(name, raw, default, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_env_value(name, raw, default)
