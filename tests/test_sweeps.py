"""Sweeps as users run them: `python -m diffgentor -m ...` with hydra.sweep.dir in tmp, the summary files, the
baseline, failures that do not stop the sweep, the exit code, `report` rebuilds, resume, and every
checked-in experiment (composed and planned job by job, and run on the embedded testbed)."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from diffgentor.optimize.plan import build_plan
from diffgentor.resume import completed, config_hash
from diffgentor.run import resolve_config
from diffgentor.sweep import rebuild_report
from diffgentor.sweep.baseline import choose_baseline
from diffgentor.sweep.files import GRID_PNG, PARETO_PNG, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, speedup_text
from diffgentor.sweep.jobs import Job, SweepError
from diffgentor.sweep.rows import (BEYOND_NOISE, COLUMNS, NO_SPREAD, WITHIN_NOISE, pareto_eligible, pareto_front,
                                   speedup_against, timing_notes)

from conftest import CONF_DIR, REPO, run_cli

SUMMARY_FILES = (SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, PARETO_PNG, GRID_PNG)
#: The experiments that sweep (the tune_* ones are tuning studies on the Optuna sweeper: tests/test_tune.py).
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml") if not p.stem.startswith("tune_"))
#: The embedded testbed standing in for an experiment's model, by pipeline family.
TESTBED_FOR_FAMILY = {"flux": "tiny-flux", "sd": "tiny-sd", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3",
                      "pixart": "tiny-pixart", "qwenimage": "tiny-qwenimage"}
#: The one reason an experiment's job may be refused or fail: this machine lacks the hardware or optional
#: package it needs (flash / sage / xformers attention on a CPU machine).
ENVIRONMENT_LIMIT = re.compile(r"needs the package|not installed|needs CUDA|CUDA|requires? (an )?accelerator")


def _sweep(args: list[str], sweep_dir: Path, testbed_cache: Path, cwd: Path):
    return run_cli(["-m", *args, f"hydra.sweep.dir={sweep_dir}"], cwd, testbed_cache=testbed_cache)


def _summary(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / SUMMARY_JSON).read_text())


def _records(sweep_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


# ------------------------------------------------------------------------------------------ a sweep end to end

@pytest.fixture(scope="module")
def steps_sweep(tmp_path_factory, testbed_cache):
    """One 3-job multirun, shared by the tests that only read it (they copy it before changing anything)."""
    root = tmp_path_factory.mktemp("steps-sweep")
    sweep_dir = root / "sweep"
    args = ["steps=2,3,4", "num_images_per_prompt=2"]
    result = _sweep(args, sweep_dir, testbed_cache, root)
    return args, sweep_dir, result


def test_multirun_writes_jobs_and_summary(steps_sweep):
    _, sweep_dir, result = steps_sweep
    assert result.returncode == 0, result.stderr
    records = _records(sweep_dir)
    assert len(records) == 3 and all(r["status"] == "ok" for r in records.values())
    for name in SUMMARY_FILES:
        assert (sweep_dir / name).is_file() and (sweep_dir / name).stat().st_size > 0, name
    summary = _summary(sweep_dir)
    rows = summary["rows"]
    assert [r["job"] for r in rows] == [0, 1, 2]
    assert [r["label"] for r in rows] == ["steps=2", "steps=3", "steps=4"]
    assert list(rows[0]) == list(COLUMNS)
    csv_lines = (sweep_dir / SUMMARY_CSV).read_text().splitlines()
    assert csv_lines[0] == ",".join(COLUMNS) and len(csv_lines) == 1 + 3
    assert f"sweep summary: {sweep_dir / SUMMARY_MD}" in result.stdout

    # Every job ran without optimizations: the first is the baseline, and the summary says why and which.
    assert summary["baseline"]["job"] == 0
    assert "no optimizations" in summary["baseline"]["note"] and "1, 2" in summary["baseline"]["note"]
    base = rows[0]
    assert base["speedup"] == 1.0 and base["pareto"]
    assert math.isinf(base["psnr_db"]) and base["ssim"] == pytest.approx(1.0) and base["identical"]
    assert base["quality_pairs"] == 2
    for row in rows[1:]:  # more steps, other pixels, same prompts and seeds
        assert row["status"] == "ok" and row["speedup"] > 0 and row["quality_pairs"] == 2
        assert math.isfinite(row["psnr_db"]) and row["ssim"] < 1.0 and row["identical"] is False
        assert row["latency_median_s"] > 0 and row["peak_bytes"] > 0
    assert summary["metrics"]["lpips"].startswith(("n/a", "LPIPS"))
    md = (sweep_dir / SUMMARY_MD).read_text()
    assert "inf (identical)" in md and "steps=2 **(baseline)**" in md and "| 2 | steps=4 | ok |" in md


def test_report_rebuild_matches_the_sweep(steps_sweep, tmp_path):
    _, sweep_dir, _ = steps_sweep
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    written = {name: (copy / name).read_text() for name in (SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD)}
    for name in SUMMARY_FILES:
        (copy / name).unlink()
    line = rebuild_report(copy)
    assert line.startswith("3 jobs, 0 failed; baseline: job 0")
    for name in SUMMARY_FILES:
        assert (copy / name).is_file(), name
    assert (copy / SUMMARY_CSV).read_text() == written[SUMMARY_CSV]
    rebuilt, original = _summary(copy), json.loads(written[SUMMARY_JSON])
    assert rebuilt["rows"] == original["rows"] and rebuilt["baseline"] == original["baseline"]
    assert (copy / SUMMARY_MD).read_text() == written[SUMMARY_MD].replace(str(sweep_dir), str(copy))


def test_report_reads_corrupt_records_and_counts_missing_images(steps_sweep, tmp_path, capsys):
    """A record that is a list, or has fields of the wrong type, is a failed row saying why; a deleted PNG and
    a PNG that is not an image are counted and named in the summary, never silently dropped (issue 12)."""
    from diffgentor import cli

    _, sweep_dir, _ = steps_sweep
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    jobs = sorted(p for p in copy.iterdir() if (p / "run.json").is_file())
    first, second, third = (json.loads((job / "run.json").read_text()) for job in jobs)
    (jobs[1] / second["images"][0]["file"]).unlink()
    (jobs[1] / second["images"][1]["file"]).write_bytes(b"not a png")
    for name, content in (("list", [third]), ("typed", {**third, "timings": "fast"}),
                          ("escape", {**third, "images": [{"file": "../../etc/passwd", "prompt": "p", "seed": 0}]})):
        bad = copy / f"00{len(jobs)}-{name}"
        jobs.append(bad)
        bad.mkdir()
        (bad / "run.json").write_text(json.dumps(content))
    cli.main(["report", str(copy)])  # returns: a report over damaged records is still a report
    out = capsys.readouterr()
    rows = {row["folder"]: row for row in _summary(copy)["rows"]}
    assert rows[jobs[1].name]["images_missing"] == 2 and rows[jobs[1].name]["quality_pairs"] == 0
    assert rows[jobs[2].name]["images_missing"] == 0 and rows[jobs[2].name]["quality_pairs"] == 2
    assert rows["003-list"]["error"] == "unreadable run.json (a JSON list, not an object)"
    assert rows["004-typed"]["error"] == "unreadable run.json (timings is a str, not a dict)"
    assert "outside the run folder" in rows["005-escape"]["error"]
    assert all(rows[name]["status"] == "failed" for name in ("003-list", "004-typed", "005-escape"))
    md = (copy / SUMMARY_MD).read_text()
    assert "2 of 2 images missing or unreadable; its quality is over 0 image pairs" in md
    assert "2 listed images missing or unreadable" in out.out


def test_resume_and_failure_records_survive_a_record_that_is_a_list(tmp_path, make_config):
    from diffgentor.resume import completed, record_failure

    (tmp_path / "run.json").write_text("[1, 2]")
    assert completed(tmp_path, {}) is None
    record_failure(tmp_path, make_config([]), [], ValueError("boom"))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"


def test_report_with_another_baseline_and_a_bad_one(steps_sweep, tmp_path):
    _, sweep_dir, _ = steps_sweep
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    rebuild_report(copy, baseline="2")
    rows = {r["job"]: r for r in _summary(copy)["rows"]}
    assert rows[2]["speedup"] == 1.0 and math.isinf(rows[2]["psnr_db"]) and math.isfinite(rows[0]["psnr_db"])
    with pytest.raises(SweepError, match=r"sweep.baseline='steps=9' matches no job of 3"):
        rebuild_report(copy, baseline="steps=9")
    assert _summary(copy)["baseline"]["job"] is None  # written all the same, saying why there is no baseline


def test_resume_skips_completed_jobs_and_reruns_the_rest(steps_sweep, tmp_path, testbed_cache):
    args, sweep_dir, _ = steps_sweep
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    folders = sorted(p.parent for p in copy.glob("*/run.json"))
    rerun = folders[1] / "run.json"
    record = json.loads(rerun.read_text())
    record["status"] = "failed"
    rerun.write_text(json.dumps(record))
    kept = {f.name: (f / "run.json").read_bytes() for f in (folders[0], folders[2])}
    (copy / SUMMARY_MD).unlink()

    result = _sweep([*args, "resume=true"], copy, testbed_cache, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped (resume=true)") == 2
    assert sorted(p.parent.name for p in copy.glob("*/run.json")) == [f.name for f in folders]  # same folders
    for name, data in kept.items():
        assert (copy / name / "run.json").read_bytes() == data, name
    assert json.loads(rerun.read_text())["status"] == "ok"
    assert (copy / SUMMARY_MD).is_file() and len(_summary(copy)["rows"]) == 3


def test_resume_does_not_skip_a_changed_config(steps_sweep):
    _, sweep_dir, _ = steps_sweep
    folder = sorted(p.parent for p in sweep_dir.glob("*/run.json"))[0]
    config = json.loads((folder / "run.json").read_text())["config"]
    assert completed(folder, config) is not None
    assert completed(folder, {**config, "progress": True, "resume": True, "cache_dir": "/elsewhere"})
    assert completed(folder, {**config, "seed": config["seed"] + 1}) is None
    assert config_hash({**config, "guidance_scale": config["guidance_scale"] + 1.0}) != config_hash(config)


# ------------------------------------------------------------------------------------------ failures

def test_failing_jobs_do_not_stop_the_sweep_and_exit_non_zero(tmp_path, testbed_cache):
    """Three ways to fail: refused before any record (batch_size=0), a user error after loading (height=60),
    an unexpected exception inside the pipeline (diffusers' ValueError). The sweep runs every job."""
    sweep_dir = tmp_path / "sweep"
    result = _sweep(["steps=2", "++model.call_kwargs.max_sequence_length=64,1024", "batch_size=1,0"],
                    sweep_dir, testbed_cache, tmp_path)
    assert result.returncode == 1
    records = _records(sweep_dir)
    assert len(records) == 4
    statuses = {str(int(name.split("-")[0])): r["status"] for name, r in records.items()}
    assert statuses == {"0": "ok", "1": "refused", "2": "failed", "3": "refused"}  # batch_size=0: before load
    errors = {str(int(name.split("-")[0])): r.get("error", "") for name, r in records.items()}
    assert errors["1"].startswith("InvalidConfigError: batch_size=0") and errors["3"].startswith("InvalidConfigError: batch_size")
    assert errors["2"].startswith("ValueError: `max_sequence_length` cannot be greater than 512")
    assert "Traceback" in result.stdout + result.stderr  # an unexpected error shows where it came from

    rows = _summary(sweep_dir)["rows"]
    assert [r["status"] for r in rows] == ["ok", "refused", "failed", "refused"]
    assert rows[2]["error"] == errors["2"] and rows[0]["speedup"] == 1.0
    md = (sweep_dir / SUMMARY_MD).read_text()
    assert "## Failed jobs" in md and "ValueError: `max_sequence_length`" in md
    assert "error: 3 of 4 jobs failed" in result.stderr


# ------------------------------------------------------------------------------------------ baseline, Pareto

def _job(num: int, overrides: list[str], optimizations: tuple[str, ...] = ("tf32",), status: str = "ok",
         dtype: str = "float32") -> Job:
    record = {"status": status, "overrides": overrides, "dtype": dtype,
              "optimizations": [{"name": name} for name in optimizations]}
    return Job(num, Path(f"{num}_{','.join(overrides)}"), record, " ".join(overrides))


def test_baseline_is_the_job_without_optimizations_or_the_one_asked_for():
    jobs = [_job(0, ["+cache=pab"], ("tf32", "pab")), _job(1, ["+cache=none"]),
            _job(2, ["+cache=first_block_cache"], ("tf32", "first_block_cache"))]
    base, note = choose_baseline(jobs, None)
    assert base.num == 1 and "no optimizations" in note
    assert choose_baseline(jobs, "2")[0].num == 2
    assert choose_baseline(jobs, "+cache=pab")[0].num == 0
    assert choose_baseline(jobs, "cache=pab")[0].num == 0
    assert choose_baseline(jobs, "2_+cache=first_block_cache")[0].num == 2
    with pytest.raises(SweepError, match="matches jobs 0, 1, 2"):
        choose_baseline([_job(i, ["+cache=none", f"seed={i}"]) for i in range(3)], "+cache=none")


def test_baseline_prefers_fp32_and_skips_failed_jobs():
    jobs = [_job(0, ["precision=bf16"], dtype="bfloat16"), _job(1, ["precision=fp32"], status="failed"),
            _job(2, ["precision=fp32", "seed=1"])]
    base, note = choose_baseline(jobs, None)
    assert base.num == 2 and "several: 0 too" in note
    none, note = choose_baseline([_job(0, ["+cache=pab"], ("tf32", "pab"))], None)
    assert none is None and note.startswith("no baseline")


def test_pareto_front():
    points = {0: (1.0, math.inf), 1: (2.0, 30.0), 2: (1.5, 25.0), 3: (3.0, 20.0), 4: (3.0, 20.0)}
    assert pareto_front(points) == {0, 1, 3, 4}


def _timed(job: Job, median: float, low: float, high: float, n: int, warmup: int = 1, session: str = "s1",
           compute_fraction: float | None = None) -> Job:
    job.record.update(timings={"latency_s": {"median": median, "min": low, "max": high, "n": n},
                               "warmup_passes": warmup},
                      config={"batch_size": 1}, environment={"host": "h", "device_name": "cpu", "session": session})
    if compute_fraction is not None:
        job.record["optimizations"].append({"name": "first_block_cache",
                                            "evidence": {"compute_fraction": compute_fraction}})
    return job


def test_noise_is_reported_as_noise_and_never_starred():
    """Issue 11: a speedup inside the latencies' spread, one timed once, or one of a cache that skipped
    nothing is shown for what it is and kept off the Pareto front; mixed protocols and sessions are named."""
    base = _timed(_job(0, ["+cache=none"]), 1.0, 0.9, 1.2, 3)
    jobs = [base,
            _timed(_job(1, ["+cache=a"], ("tf32", "a")), 0.5, 0.45, 0.55, 3),
            _timed(_job(2, ["+cache=b"], ("tf32", "b")), 0.8, 0.6, 1.0, 3),  # overlaps [0.9, 1.2]
            _timed(_job(3, ["+cache=c"], ("tf32", "c")), 0.3, 0.3, 0.3, 1),  # one timed call
            _timed(_job(4, ["+cache=d"], ("tf32", "d")), 0.35, 0.3, 0.4, 3, warmup=0, session="s2",
                   compute_fraction=1.0)]
    speedups = {job.num: speedup_against(job, base) for job in jobs}
    assert speedups[1]["noise"] == BEYOND_NOISE
    assert speedups[1]["speedup"] == pytest.approx(2.0)
    assert (speedups[1]["speedup_min"], speedups[1]["speedup_max"]) == pytest.approx((0.9 / 0.55, 1.2 / 0.45))
    assert speedups[2]["noise"] == WITHIN_NOISE and speedups[2]["speedup"] == pytest.approx(1.25)
    assert speedups[3]["noise"] == NO_SPREAD
    rows = [{"job": job.num, "compute_fraction": (1.0 if job.num == 4 else None), **speedups[job.num]}
            for job in jobs]
    assert [pareto_eligible(row, 0) for row in rows] == [True, True, False, False, False]
    notes = " / ".join(timing_notes(jobs, rows))
    assert "different warmups (1: jobs 0, 1, 2, 3; 0: job 4)" in notes and "job 4 timed with benchmark.warmup=0" in notes
    assert "2 sessions" in notes and "job 3: one timed call, no spread" in notes
    assert "job 4: the cache skipped nothing" in notes
    assert speedup_text({**rows[2], "job": 2}, 0) == "1.25x (within noise)"
    assert speedup_text(rows[1], 0).startswith("2.00x [1.64, 2.67]")


# ------------------------------------------------------------------------------------------ experiments

def _experiment_jobs(name: str, model: str | None = None) -> list[list[str]]:
    """The override list of every job `python -m diffgentor -m +experiment=NAME` runs, expanded by Hydra.
    Call inside initialize_config_dir."""
    extra = [f"model={model}"] if model else []
    cfg = compose("config", overrides=[f"+experiment={name}", *extra], return_hydra_config=True)
    params = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    assert params, f"experiments/{name}.yaml declares no sweep (hydra.sweeper.params)"
    overrides = OverridesParser.create().parse_overrides(params)
    return [[f"+experiment={name}", *extra, *job] for job in BasicSweeper.split_arguments(overrides, None)[0]]


def _compose_jobs(name: str, model: str | None = None) -> list:
    """The composed config of every job of the experiment (a job that cannot compose fails the test)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return [compose("config", overrides=overrides) for overrides in _experiment_jobs(name, model)]


def _testbed_model(name: str) -> str:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        family = compose("config", overrides=[f"+experiment={name}"]).model.family
    return TESTBED_FOR_FAMILY[family]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_jobs_compose_and_plan(name):
    """Every job of the experiment, on its own model and on the testbed: composes, and its plan is accepted,
    or refused only for want of hardware or a package this machine lacks."""
    for model in (None, _testbed_model(name)):
        for cfg in _compose_jobs(name, model):
            run_cfg = resolve_config(cfg)
            plan = build_plan(run_cfg, run_cfg.model.family)
            for step in plan.refused:
                assert ENVIRONMENT_LIMIT.search(step.reason), f"{name} {model}: {step.name}: {step.reason}"


def test_seed_experiments_are_the_seed_configurations():
    baseline, fastest = (resolve_config(c) for c in _compose_jobs("seed_max_speed"))
    assert baseline.model.path == fastest.model.path == "black-forest-labs/FLUX.1-dev"
    assert baseline.precision.dtype.value == fastest.precision.dtype.value == "bf16"
    assert (baseline.compile, baseline.attention, baseline.cache, baseline.fuse_qkv) == (None, None, None, False)
    assert (fastest.attention.name, fastest.cache.name, fastest.fuse_qkv) == ("flash", "first_block_cache", True)
    assert fastest.compile.name == "enabled" and fastest.prompt == "A landscape"
    baseline, balanced = (resolve_config(c) for c in _compose_jobs("seed_balanced"))
    assert (baseline.compile, baseline.attention, baseline.cache, baseline.fuse_qkv) == (None, None, None, False)
    assert (balanced.compile, balanced.attention.name, balanced.cache.name, balanced.fuse_qkv) == (
        None, "flash", "first_block_cache", False)
    assert balanced.precision.dtype.value == "bf16" and balanced.model.path == "black-forest-labs/FLUX.1-dev"


def test_every_experiment_runs_on_the_testbed(tmp_path, testbed_cache):
    """`experiment=glob(*)`: each experiment's fixed settings, one job each, through the real command line."""
    sweep_dir = tmp_path / "sweep"
    result = _sweep(["+experiment=glob(*,exclude=tune_*)", "model=tiny-flux", "steps=2", "benchmark.warmup=0",
                     "benchmark.repeats=1", "num_images_per_prompt=1"], sweep_dir, testbed_cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _summary(sweep_dir)["rows"]
    assert sorted(r["label"] for r in rows) == [f"experiment={name}" for name in EXPERIMENTS]
    assert all(r["status"] == "ok" for r in rows)


@pytest.mark.slow  # 2-9 jobs each (compile_modes compiles five times): about 5 CPU-minutes in all
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_sweep_runs_on_the_testbed(name, tmp_path, testbed_cache):
    """The experiment's own sweep on the testbed model; a job may only fail for want of CUDA or a package."""
    model = _testbed_model(name)
    sweep_dir = tmp_path / "sweep"
    result = _sweep([f"+experiment={name}", f"model={model}", "steps=2", "benchmark.repeats=1",
                     "num_images_per_prompt=1"], sweep_dir, testbed_cache, tmp_path)
    rows = _summary(sweep_dir)["rows"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert len(rows) == len(_experiment_jobs(name, model))
    failed = [r for r in rows if r["status"] != "ok"]
    for row in failed:
        assert ENVIRONMENT_LIMIT.search(row["error"] or ""), f"{row['label']}: {row['error']}"
    assert result.returncode == (1 if failed else 0), result.stderr[-3000:]
    assert rows[0]["speedup"] == 1.0 and math.isinf(rows[0]["psnr_db"])  # the first job is the baseline
    for row in rows[1:]:  # a star only for a speedup beyond noise, of a job that skipped something if it caches
        assert not row["pareto"] or (row["noise"] == BEYOND_NOISE and (row["compute_fraction"] or 0) < 1)
