"""Bad input is refused before load with every reason; stopped runs say so; run.json stays strict JSON."""

from __future__ import annotations

import json
import math
import shlex
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
    ("benchmark.min_timed_calls=0", "benchmark.min_timed_calls=0: must be >= 1"),
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
       batch=st.integers(-2, 3), repeats=st.integers(-1, 3), threads=st.one_of(st.none(), st.integers(-1, 4)),
       threshold=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True).map(repr),
                           st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                   max_size=8)))
def test_any_value_plans_or_is_refused_in_words(make_config, tmp_path, steps, side, seed, guidance, images, batch,
                                                 repeats, threads, threshold):
    """The whole config surface, dry-run: every combination plans or raises a user error, nothing else;
    `threshold` is a DG_FBC_THRESHOLD environment value (any float text, or any text at all)."""
    import os

    overrides = [f"steps={steps}", f"height={side}", f"width={side}", f"seed={seed}",
                 f"guidance_scale={guidance!r}", f"num_images_per_prompt={images}",
                 f"batch_size={batch}", f"benchmark.repeats={repeats}",
                 f"threads={'null' if threads is None else threads}", "dry_run=true"]
    if threshold is not None:
        overrides.append("+cache=first_block_cache")
        os.environ["DG_FBC_THRESHOLD"] = threshold
    try:
        try:
            cfg = make_config(overrides)
        except Exception as exc:  # Hydra's own composition error: a message, not ours to word
            assert "Traceback" not in str(exc)
            return
        try:
            execute(cfg, tmp_path, overrides)
        except DiffgentorError as exc:
            assert str(exc) and "\n" not in str(exc)
    finally:
        os.environ.pop("DG_FBC_THRESHOLD", None)


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


# ---- refused before load, all at once, and a dry run that says so in its exit code -----------------------

def test_a_size_the_family_cannot_take_is_refused_before_load(tmp_path, make_config, no_load):
    with pytest.raises(InvalidConfigError, match="height=60: this pipeline needs height and width that are "
                                                 "multiples of 8; e.g. height=56 width=64"):
        execute(make_config(["height=60"]), tmp_path, ["height=60"])
    assert _strict((tmp_path / "run.json").read_text())["status"] == "refused"


def test_a_hub_model_size_is_checked_with_its_family_factor_offline(tmp_path, make_config, no_load):
    """FLUX.1-dev is not on this machine: the factor is the family's (VAE 8 x 2x2 packing = 16)."""
    with pytest.raises(InvalidConfigError, match="width=1000: .*multiples of 16"):
        execute(make_config(["model=flux-dev", "width=1000", "dry_run=true"]), tmp_path, [])


def test_a_dry_run_lists_values_plan_and_prompts_refusals_then_fails(tmp_path, testbed_cache):
    result = subprocess.run([sys.executable, "-m", "diffgentor", "dry_run=true", "steps=0", "height=60",
                             "+attention=flash", "+cache=first_block_cache", "cache.threshold=-1",
                             "prompts_file=missing.txt", f"cache_dir={testbed_cache}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    refused = [line.strip() for line in result.stdout.splitlines() if "REFUSED" in line]
    assert len(refused) == 5, result.stdout
    for needle in ("attention {", "first_block_cache {", "REFUSED: steps=0", "REFUSED: height=60",
                   "REFUSED: prompts_file=missing.txt"):
        assert any(needle in line for line in refused), (needle, result.stdout)
    (error,) = result.stderr.strip().splitlines()
    assert error.startswith("error: steps=0: must be >= 1") and "cache.threshold=-1" in error, error
    assert not list(tmp_path.glob("outputs/*/*/run.json"))  # a dry run writes no record


# ---- schemas are not options --------------------------------------------------------------------------------

def test_internal_schemas_are_not_options():
    from hydra.errors import ConfigCompositionException, MissingConfigException

    from conftest import compose_config
    from diffgentor.config import option_groups

    groups = dict(line.split(": ", 1) for line in option_groups().splitlines())
    assert groups["cache"].split(", ") == ["cache_dit", "deep_cache", "faster_cache", "first_block_cache",
                                           "mag_cache", "none", "pab", "taylor_seer"]
    assert groups["experiment/seed"] == "balanced, baseline, max_speed"  # conf/experiment is a link: followed
    assert "schema" not in option_groups() and "base_" not in option_groups()
    for override in ("+cache=base_pab", "model=base_model"):  # the old names are gone
        with pytest.raises(MissingConfigException, match="Could not find"):
            compose_config([override])
    with pytest.raises(ConfigCompositionException, match="schema/cache/pab"):  # a schema composes to no key
        compose_config(["+schema/cache=pab"])
    assert compose_config(["+cache=pab"]).cache.spatial_skip_range == 2  # the option still extends its schema


def test_help_lists_only_the_options(tmp_path):
    result = subprocess.run([sys.executable, "-m", "diffgentor", "--help"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cache: cache_dit, deep_cache, faster_cache, first_block_cache," in result.stdout
    assert "base_" not in result.stdout and "schema" not in result.stdout.split("== Config ==")[0]


# ---- output folders that cannot be used: refused before Hydra writes there ------------------------------------

def _diffgentor(args: list[str], cwd, testbed_cache, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffgentor", *args, "progress=false", f"cache_dir={testbed_cache}"],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_a_run_folder_under_a_file_is_one_error_line(tmp_path, testbed_cache):
    (tmp_path / "afile").write_text("not a folder")
    for args in (["hydra.run.dir=afile/run"], ["-m", "hydra.sweep.dir=afile/sweep", "+cache=none"]):
        result = _diffgentor(args, tmp_path, testbed_cache)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: hydra.") and f"{tmp_path / 'afile'} is a file, not a folder" in line, line


def test_a_finished_run_folder_keeps_its_hydra_record(tmp_path, testbed_cache):
    """The refusal comes before Hydra writes .hydra/ into the folder, so the first run's record stays whole."""
    first = _diffgentor(["steps=1", "benchmark.warmup=0", "hydra.run.dir=run"], tmp_path, testbed_cache)
    assert first.returncode == 0, first.stderr
    saved = (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text()
    second = _diffgentor(["steps=2", "hydra.run.dir=run"], tmp_path, testbed_cache)
    assert second.returncode == 1 and "already holds a run's results" in second.stderr, second.stderr
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == saved


# ---- a read-only and a full disk: small tmpfs mounts in a private mount namespace ----------------------------

def _namespace_prefix() -> list[str] | None:
    """`unshare` into a private mount namespace (as root, or as a user where user namespaces are allowed),
    where a test may mount a small tmpfs; None when this machine allows neither."""
    import shutil

    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-rm"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                               capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def _in_tmpfs(command: list[str], mount, size: str, cwd, read_only: bool = False, keep=None):
    """Run `command` with a fresh tmpfs of `size` on `mount` (read-only if asked); the tmpfs ends with the
    namespace, so what the test reads afterwards is copied to `keep` first."""
    quoted = " ".join(shlex.quote(str(part)) for part in command)
    script = (f"mount -t tmpfs -o size={size} none {mount} && "
              + (f"mount -o remount,ro {mount} && " if read_only else "")
              + f"{{ {quoted}; rc=$?; }}; "
              + (f"cp -a {mount}/. {keep}/; " if keep else "") + "exit $rc")
    return subprocess.run([*_namespace_prefix(), "sh", "-c", script], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_a_read_only_output_folder_is_one_error_line(tmp_path, testbed_cache, monkeypatch):
    if _namespace_prefix() is None:  # no mount namespace here: the same check, with os.access saying "no"
        from diffgentor.runfolder import refusal_before_start

        monkeypatch.setattr("os.access", lambda *a, **k: False)
        assert "is not writable (a read-only file system" in refusal_before_start(tmp_path / "x", False, False)
        return
    mount = tmp_path / "ro"
    mount.mkdir()
    result = _in_tmpfs([sys.executable, "-m", "diffgentor", "steps=1", "progress=false",
                        f"cache_dir={testbed_cache}", f"hydra.run.dir={mount}/run"], str(mount), "1m", tmp_path,
                       read_only=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert f"{mount} is not writable (a read-only file system" in line, line


def test_a_full_disk_ends_with_a_record_of_every_whole_image(tmp_path, testbed_cache, monkeypatch, make_config):
    """A 200 KiB tmpfs fills up after a dozen or so 64x64 images: the run says why in one line, run.json (strict
    JSON) says "failed" and lists exactly the PNGs on disk, each a whole image; no temp file is left. Where
    no tmpfs can be mounted, ENOSPC is raised by the PNG writer instead (the record path is the same)."""
    from PIL import Image

    if _namespace_prefix() is None:
        calls = {"n": 0}
        real = Image.Image.save

        def fill_up(self, fp, *args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 3:
                raise OSError(28, "No space left on device")
            return real(self, fp, *args, **kwargs)

        monkeypatch.setattr(Image.Image, "save", fill_up)
        with pytest.raises(OSError, match="No space left"):
            execute(make_config(["num_images_per_prompt=6", "steps=1", "benchmark.warmup=0"]), tmp_path / "run", [])
        run_dir = tmp_path / "run"
    else:
        mount, kept = tmp_path / "disk", tmp_path / "kept"
        mount.mkdir()
        kept.mkdir()
        result = _in_tmpfs([sys.executable, "-m", "diffgentor", "num_images_per_prompt=100", "steps=1",
                            "benchmark.warmup=0", "progress=false", f"cache_dir={testbed_cache}",
                            f"hydra.run.dir={mount}/run"], mount, "200k", tmp_path, keep=kept)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        (line,) = result.stderr.strip().splitlines()
        assert "No space left on device (errno 28); free space there" in line, line
        run_dir = kept / "run"
    record = _strict((run_dir / "run.json").read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]
    on_disk = sorted(p.name for p in (run_dir / "images").iterdir())
    assert on_disk == [i["file"].split("/")[-1] for i in record["images"]] and on_disk
    for png in on_disk:
        Image.open(run_dir / "images" / png).verify()
    assert not list(run_dir.glob(".*.tmp")) and not list((run_dir / "images").glob(".*"))


def test_run_json_has_the_images_file_mode(tmp_path):
    import os

    from PIL import Image

    from diffgentor.record import RunRecord, save_image

    previous = os.umask(0o027)
    try:
        record = RunRecord(tmp_path, {"config": {}}, reserve_bytes=4096)
        save_image(Image.new("RGB", (8, 8)), tmp_path / "images", 0, "p", 0, "m")
        record.finish("ok")
    finally:
        os.umask(previous)
    image = next((tmp_path / "images").iterdir())
    assert (tmp_path / "run.json").stat().st_mode == image.stat().st_mode
    assert oct(image.stat().st_mode & 0o777) == oct(0o640)
    assert not (tmp_path / ".diffgentor.reserve").exists()  # the reserved space is given back at the end


def test_a_run_folder_removed_mid_run_is_one_error_and_not_recreated(tmp_path, make_config, monkeypatch):
    import shutil

    from diffgentor.record import RunFolderGoneError

    real, run_dir = run_module.save_image, tmp_path / "run"

    def vanish_before_the_second(image, images_dir, index, *args):
        if index == 1:
            shutil.rmtree(run_dir)
        return real(image, images_dir, index, *args)

    monkeypatch.setattr(run_module, "save_image", vanish_before_the_second)
    with pytest.raises(RunFolderGoneError, match="the run folder was removed while the run wrote into it"):
        execute(make_config(["num_images_per_prompt=3", "steps=1", "benchmark.warmup=0"]), run_dir, [])
    assert not run_dir.exists()


def test_a_dry_run_sweep_with_a_refused_job_fails(tmp_path, testbed_cache):
    result = _diffgentor(["-m", "+cache=none,deep_cache", "dry_run=true", "hydra.sweep.dir=sweep"], tmp_path,
                         testbed_cache)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith("error: deep_cache: does not apply to 'flux' pipelines"), result.stderr
    assert errors[-1] == "error: dry run: job 001-cache=deep_cache was refused (see above)", result.stderr
    assert not list((tmp_path / "sweep").glob("*/run.json"))  # a dry run records nothing
