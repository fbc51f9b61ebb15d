"""`+tracking=mlflow` (diffgentor/tracking.py): what reaches MLflow, read back with MLflow's own MlflowClient from
the local SQLite store the default writes: params, metrics, artifacts and statuses, a sweep as a parent run with
a child per job (jobs in processes of their own too), a tracking server that is down (a warning, never a
failed run), and the one-line refusal when mlflow is not installed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hydra.types import RunMode
from omegaconf import OmegaConf

from conftest import REPO, run_cli

TRACKED = ["model=tiny-flux", "benchmark.min_timed_calls=1", "threads=1", "+tracking=mlflow"]
RUN = [*TRACKED, "steps=2"]
#: MLflow 3.18's SQLite store on SQLAlchemy 2.1 (reading runs back here): not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
SUMMARY_FILES = ["grid.png", "pareto.png", "summary.csv", "summary.json", "summary.md"]


def _runs(folder) -> tuple[object, list]:
    """The client of the default store (<cwd>/mlflow.db) and its runs, oldest first."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("diffgentor")
    assert experiment.artifact_location == (folder / "mlartifacts").as_uri()  # pinned, not relative to a cwd
    return client, client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])


def _by_name(runs: list) -> dict:
    return {run.info.run_name: run for run in runs}


def _artifacts(client, run_id: str, path: str | None = None) -> list[str]:
    return sorted(a.path for a in client.list_artifacts(run_id, path))


def test_a_sweep_is_one_parent_run_with_a_child_per_job(tmp_path, testbed_cache):
    """Basic launcher: one job runs, the other is refused before load (deep_cache on FLUX)."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *RUN, "+cache=first_block_cache,deep_cache", f"hydra.sweep.dir={sweep}"], tmp_path,
                     testbed_cache=testbed_cache)
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed: the sweep's exit code, unchanged
    assert result.stdout.count("sweep summary:") == 1 and "MLflow tracking failed" not in result.stderr
    client, found = _runs(tmp_path)
    runs = _by_name(found)
    parent = runs[str(sweep)]
    ok, refused = runs["000-cache=first_block_cache"], runs["001-cache=deep_cache"]
    assert set(runs) == {str(sweep), ok.info.run_name, refused.info.run_name}

    # the parent: the sweep's command line and, written before it was attached, its summary
    assert parent.info.status == "FAILED" and "mlflow.parentRunId" not in parent.data.tags
    assert "+cache=first_block_cache,deep_cache" in parent.data.params["overrides"]
    assert _artifacts(client, parent.info.run_id) == sorted([*SUMMARY_FILES, "multirun.yaml"])
    attached = client.download_artifacts(parent.info.run_id, "summary.json", str(tmp_path / "down"))
    assert open(attached).read() == (sweep / "summary.json").read_text()
    assert json.loads((sweep / "mlflow.json").read_text())["run_id"] == parent.info.run_id

    # the job that ran: its config as params, its record's numbers as metrics, its files as artifacts
    record = json.loads((sweep / "000-cache=first_block_cache" / "run.json").read_text())
    assert ok.info.status == "FINISHED" and ok.data.tags["mlflow.parentRunId"] == parent.info.run_id
    params = ok.data.params
    assert (params["model.name"], params["steps"], params["cache.threshold"]) == ("tiny-flux", "2", "0.2")
    assert params["tracking.experiment"] == "diffgentor" and "+cache=first_block_cache" in params["overrides"]
    timings, metrics = record["timings"], ok.data.metrics
    expected = {"latency_s.median": timings["latency_s"]["median"], "latency_s.min": timings["latency_s"]["min"],
                "latency_s.max": timings["latency_s"]["max"], "peak_bytes": record["memory"]["peak_bytes"],
                "first_block_cache.compute_fraction": record["optimizations"][1]["evidence"]["compute_fraction"],
                **{key: timings[key] for key in ("images_per_s", "s_per_step", "load_s", "optimize_s", "warmup_s")}}
    assert metrics == pytest.approx(expected)
    assert _artifacts(client, ok.info.run_id) == ["diffgentor.log", "images", "run.json"]
    assert _artifacts(client, ok.info.run_id, "images") == [image["file"] for image in record["images"]]
    assert ok.data.tags["diffgentor.run_dir"] == str(sweep / "000-cache=first_block_cache")

    # the refused job: FAILED, with the record's status and error
    assert refused.info.status == "FAILED" and refused.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert refused.data.tags["diffgentor.status"] == "refused" and "deep_cache" in refused.data.tags["diffgentor.error"]
    assert _artifacts(client, refused.info.run_id) == ["diffgentor.log", "run.json"]


def test_a_job_in_a_process_of_its_own_finds_the_sweep_run(tmp_path, testbed_cache):
    """Joblib launcher (n_jobs=2: a worker process, never the launching one): the job finds its parent through
    the sweep folder. One job refused before load keeps it cheap."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *TRACKED, "steps=0",
                      f"hydra.sweep.dir={sweep}"], tmp_path, testbed_cache=testbed_cache)
    assert result.returncode == 1 and "MLflow tracking failed" not in result.stderr, result.stderr[-3000:]
    parent, job = _runs(tmp_path)[1]
    assert (parent.info.run_name, job.info.run_name) == (str(sweep), "000")
    assert job.data.tags["mlflow.parentRunId"] == parent.info.run_id and job.data.params["steps"] == "0"
    assert job.info.status == parent.info.status == "FAILED" and job.data.tags["diffgentor.status"] == "refused"


def test_a_server_that_is_down_is_one_warning_and_the_run_is_whole(tmp_path, testbed_cache):
    """Port 9 refuses connections; with MLflow's own retry defaults this would take ~4 minutes, not seconds."""
    result = run_cli([*RUN, "tracking.uri=http://127.0.0.1:9", "hydra.run.dir=run"], tmp_path,
                     testbed_cache=testbed_cache, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "MLflow tracking failed" in line]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0] and "Traceback" not in result.stderr, result.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "ok" and (tmp_path / "run" / record["images"][0]["file"]).is_file()
    assert "MLflow tracking failed" in (tmp_path / "run" / "diffgentor.log").read_text()
    assert not (tmp_path / "mlflow.db").exists()


def _job_config(tmp_path, run_dir):
    return OmegaConf.create({"dry_run": False, "hydra": {
        "mode": RunMode.RUN, "job": {"name": "diffgentor"}, "sweep": {"dir": "multirun"},
        "runtime": {"output_dir": str(run_dir), "cwd": str(tmp_path)}}})


def test_quality_compile_time_and_long_values(tmp_path):
    """In process, on a record written by hand: quality's numbers (not its strings or Nones), compile's
    first-call time, a param over MLflow's length limit cut with a marker, and a job a resume skipped."""
    from diffgentor.tracking import TRUNCATED, MlflowTracking

    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    (run_dir / "images" / "00000_x.png").write_bytes(b"png")
    record = {"status": "ok", "config": {"prompt": "x" * 7000, "model": {"name": "m", "call_kwargs": {}}},
              "overrides": ["model=m"], "images": [{"file": "images/00000_x.png", "prompt": "x", "seed": 0}],
              "optimizations": [{"name": "compile", "evidence": {"timing": {"transformer": {
                  "first_call_s": 3.5, "steady_call_s": 0.5, "compile_overhead_s": 3.0}}}}],
              "timings": {"latency_s": {"median": 0.5, "min": 0.4, "max": None, "n": 2}}, "memory": {},
              "quality": {"against": "reference", "psnr_db": 31.5, "ssim": 0.97, "lpips": None, "images": 1}}
    config = _job_config(tmp_path, run_dir)
    tracking = MlflowTracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.on_job_start(config)
    (run_dir / "run.json").write_text(json.dumps(record))
    tracking.on_job_end(config)
    tracking.on_job_start(config)  # again: run.json is older than this job, as when a resume skips it
    tracking.on_job_end(config)
    first, again = _runs(tmp_path)[1]
    assert first.data.metrics == {
        "latency_s.median": 0.5, "latency_s.min": 0.4, "quality.psnr_db": 31.5, "quality.ssim": 0.97,
        "quality.images": 1.0, "compile.transformer.first_call_s": 3.5, "compile.transformer.compile_overhead_s": 3.0}
    assert first.data.tags["quality.against"] == "reference"
    prompt = first.data.params["prompt"]
    assert len(prompt) == 6000 and prompt.endswith(TRUNCATED) and first.data.params["model.call_kwargs"] == "{}"
    assert "diffgentor.skipped" not in first.data.tags and "resume=true" in again.data.tags["diffgentor.skipped"]
    assert first.info.status == again.info.status == "FINISHED"


def test_without_mlflow_it_is_one_line_before_anything_runs(monkeypatch, capsys):
    from diffgentor.__main__ import main

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: find_spec says None, import fails
    monkeypatch.setattr("sys.argv", ["diffgentor", "-m", "+tracking=mlflow", "+cache=none,pab"])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: +tracking=mlflow needs the package 'mlflow-skinny', which is not installed: "
        "pip install 'diffgentor[mlflow]'")


def test_tracking_changes_no_job_identity_and_imports_mlflow_only_when_on():
    from diffgentor.jobdirs import job_dir
    from diffgentor.resume import config_hash

    config = {"steps": 2, "model": {"name": "tiny-flux"}}
    assert config_hash({**config, "tracking": {"name": "mlflow", "uri": None}}) == config_hash(config)
    assert job_dir(3, "+cache=pab__tracking.experiment=a") == "003-cache=pab"
    probe = ("import sys\nsys.argv = ['diffgentor', '--cfg', 'job', '+cache=pab']\n"
             "from diffgentor.__main__ import main\nmain()\nprint('mlflow imported:', 'mlflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip().endswith("mlflow imported: False"), result.stderr[-2000:]
