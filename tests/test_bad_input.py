"""Bad input is refused before load with every reason; stopped runs say so; run.json stays strict JSON."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import diffgentor.run as run_module
from diffgentor.errors import DiffgentorError
from diffgentor.record import write_json_atomic
from diffgentor.run import execute
from diffgentor.validate import InvalidConfigError


@pytest.fixture
def no_load(monkeypatch):
    monkeypatch.setattr(run_module, "load_pipeline", lambda *a, **k: pytest.fail("weights were loaded"))


def _strict(text: str):
    def refuse(token):
        raise ValueError(f"non-strict JSON token {token}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("override, needle", [
    ("steps=0", "steps=0: must be >= 1"),
    ("steps=-1", "steps=-1: must be >= 1"),
    ("steps=1000000000", "steps=1000000000: must be >= 1 and <= 10000"),
    ("height=1000000", "height=1000000: must be >= 1 and <= 16384"),
    ("seed=-1", "seed=-1: must be >= 0"),
    (f"seed={2**64}", f"seed={2**64}: must be >= 0 and <= {2**64 - 1}"),
    ("guidance_scale=inf", "guidance_scale=inf: must be a finite number"),
    ("guidance_scale=nan", "guidance_scale=nan: must be a finite number"),
    ("num_images_per_prompt=0", "num_images_per_prompt=0: must be >= 1"),
    ("benchmark.repeats=0", "benchmark.repeats=0: must be >= 1"),
    ("benchmark.warmup=-1", "benchmark.warmup=-1: must be >= 0"),
])
def test_out_of_range_values_are_refused_before_load(override, needle, tmp_path, make_config, no_load):
    with pytest.raises(InvalidConfigError, match=needle.replace("+", r"\+").replace("*", r"\*")):
        execute(make_config([override]), tmp_path, [override])
    record = _strict((tmp_path / "run.json").read_text())
    assert record["status"] == "refused" and len(record["reasons"]) == 1
    assert record["reasons"][0].startswith(needle)


def test_every_bad_value_is_listed_at_once(tmp_path, make_config, no_load):
    with pytest.raises(InvalidConfigError) as refused:
        execute(make_config(["steps=0", "seed=-3", "guidance_scale=nan", "dry_run=true"]), tmp_path, [])
    assert [r.split(":")[0] for r in refused.value.reasons] == ["steps=0", "seed=-3", "guidance_scale=nan"]


@pytest.mark.parametrize("raw", ["nan", "1e400", "-inf"])
def test_a_non_finite_cache_threshold_is_refused(raw, tmp_path, make_config, monkeypatch, no_load):
    monkeypatch.setenv("DG_FBC_THRESHOLD", raw)
    with pytest.raises(DiffgentorError, match="cache.threshold=.*must be a finite number >= 0.0"):
        execute(make_config(["+cache=first_block_cache"]), tmp_path, [])


def test_run_json_is_strict_json(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"a": math.nan, "b": [math.inf, -math.inf, 1.5]}, strict=True)
    assert _strict((tmp_path / "run.json").read_text()) == {"a": None, "b": [None, None, 1.5]}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.integers(-5, 20_000), side=st.integers(-64, 40_000), seed=st.integers(-2**65, 2**65),
       guidance=st.floats(allow_nan=True, allow_infinity=True), images=st.integers(-2, 3),
       batch=st.integers(-2, 3), repeats=st.integers(-1, 3), threads=st.one_of(st.none(), st.integers(-1, 4)))
def test_any_value_plans_or_is_refused_in_words(make_config, tmp_path, steps, side, seed, guidance, images, batch,
                                                 repeats, threads):
    """The whole config surface, dry-run: every combination plans or raises a user error, nothing else."""
    overrides = [f"steps={steps}", f"height={side}", f"width={side}", f"seed={seed}",
                 f"guidance_scale={guidance!r}", f"num_images_per_prompt={images}",
                 f"batch_size={batch}", f"benchmark.repeats={repeats}",
                 f"threads={'null' if threads is None else threads}", "dry_run=true"]
    try:
        cfg = make_config(overrides)
    except Exception as exc:  # Hydra's own composition error: a message, not ours to word
        assert "Traceback" not in str(exc)
        return
    try:
        execute(cfg, tmp_path, overrides)
    except DiffgentorError as exc:
        assert str(exc) and "\n" not in str(exc)


@pytest.mark.slow
@pytest.mark.parametrize("signum, status_code", [(signal.SIGINT, 130)])  # SIGTERM: test_two_runs_aimed_...
def test_a_stopped_run_says_interrupted_and_keeps_its_images(signum, status_code, tmp_path, testbed_cache):
    proc = subprocess.Popen([sys.executable, "-m", "diffgentor", "num_images_per_prompt=200", "steps=28",
                             "benchmark.warmup=0", "progress=false", f"cache_dir={testbed_cache}",
                             "hydra.run.dir=run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    images = tmp_path / "run" / "images"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(images.glob("*.png"))) < 2:
        time.sleep(0.2)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status_code, stderr
    assert stderr.strip().splitlines()[-1].startswith("error: interrupted by SIG"), stderr
    assert "Traceback" not in stderr
    record = _strict((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "interrupted" and record["error"].startswith("interrupted by SIG")
    assert record["images"] and all((tmp_path / "run" / i["file"]).is_file() for i in record["images"])


# ---- prompts files --------------------------------------------------------------------------------------

def test_prompts_file_bytes_and_seeds(tmp_path):
    from diffgentor.errors import ConfigError
    from diffgentor.prompts import image_jobs, read_prompts_file

    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffa red square on a green background\n".encode("utf-8"))
    assert read_prompts_file(str(bom))[0].prompt == "a red square on a green background"
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        read_prompts_file(str(latin1))
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x00\x01\x02PNG")
    with pytest.raises(ConfigError, match="NUL bytes"):
        read_prompts_file(str(binary))
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"prompt": "a star", "seed": 2**70}) + "\n")
    with pytest.raises(ConfigError, match=r"seeds are 0 <= seed < 2\*\*64"):
        image_jobs(read_prompts_file(str(big)), 1, 0, None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=2000), st.text(max_size=2000).map(lambda t: t.encode("utf-8"))),
       suffix=st.sampled_from([".txt", ".jsonl", ".csv"]))
def test_any_prompts_file_reads_or_is_refused_in_words(tmp_path, content, suffix):
    from diffgentor.errors import ConfigError
    from diffgentor.prompts import image_jobs, read_prompts_file

    path = tmp_path / f"prompts{suffix}"
    path.write_bytes(content)
    try:
        image_jobs(read_prompts_file(str(path)), 1, 0, None)
    except ConfigError as exc:
        assert str(exc) and "\n" not in str(exc)


# ---- one writer per run folder --------------------------------------------------------------------------

def test_a_folder_with_results_is_refused_unless_overwrite(tmp_path, make_config):
    from diffgentor.runfolder import FolderInUseError

    first = execute(make_config(["steps=1"]), tmp_path, [])
    stale = tmp_path / "images" / "99999_stale.png"
    stale.write_bytes(b"not ours")
    with pytest.raises(FolderInUseError, match="already holds a run's results"):
        execute(make_config(["steps=2"]), tmp_path, [])
    with pytest.raises(InvalidConfigError):  # a refusal never rewrites the finished record either
        execute(make_config(["steps=0"]), tmp_path, [])
    assert _strict((tmp_path / "run.json").read_text())["config"]["steps"] == first["config"]["steps"] == 1

    execute(make_config(["steps=2", "overwrite=true"]), tmp_path, [])
    record = _strict((tmp_path / "run.json").read_text())
    assert record["status"] == "ok" and record["config"]["steps"] == 2
    assert not stale.exists() and sorted(p.name for p in (tmp_path / "images").iterdir()) == \
        [i["file"].split("/")[-1] for i in record["images"]]


def test_resume_never_replaces_a_finished_job_of_another_config(tmp_path, make_config):
    from diffgentor.runfolder import FolderInUseError

    execute(make_config(["steps=1"]), tmp_path, [])
    with pytest.raises(FolderInUseError, match="finished run of another config"):
        execute(make_config(["steps=2", "resume=true"]), tmp_path, [])
    assert _strict((tmp_path / "run.json").read_text())["config"]["steps"] == 1


@pytest.mark.slow
def test_two_runs_aimed_at_one_folder_at_once(tmp_path, testbed_cache):
    common = ["benchmark.warmup=0", "progress=false", f"cache_dir={testbed_cache}", "hydra.run.dir=shared"]
    first = subprocess.Popen([sys.executable, "-m", "diffgentor", "num_images_per_prompt=500", *common],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    images = tmp_path / "shared" / "images"
    deadline = time.time() + 300
    while time.time() < deadline and not list(images.glob("*.png")):
        time.sleep(0.2)
    second = subprocess.run([sys.executable, "-m", "diffgentor", "seed=100", *common], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    first.send_signal(signal.SIGTERM)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 143, first_err
    assert second.returncode == 1 and second.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'shared'}: another diffgentor run is writing there now; give this run its own "
        "folder (hydra.run.dir=...)"], second.stderr
    record = _strict((tmp_path / "shared" / "run.json").read_text())
    assert record["status"] == "interrupted" and record["config"]["seed"] == 0
    assert [i["seed"] for i in record["images"]] == list(range(len(record["images"])))
    assert sorted(p.name for p in images.iterdir()) == [i["file"].split("/")[-1] for i in record["images"]]


def test_an_unwritable_images_folder_is_one_error_line(tmp_path, testbed_cache):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "images").write_text("a file where the images folder goes")
    result = subprocess.run([sys.executable, "-m", "diffgentor", "steps=1", "progress=false",
                             f"cache_dir={testbed_cache}", "hydra.run.dir=run"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and "images" in line and "hydra.run.dir" in line, line
    assert _strict((tmp_path / "run" / "run.json").read_text())["status"] == "failed"
