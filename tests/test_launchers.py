"""Sweeps on Hydra's other launchers (conf/hydra/launcher/): the summary, failure isolation and the records work
unchanged when the jobs run in processes of their own."""

from __future__ import annotations

import json

import pytest

from diffgentor.launchers import LAUNCHER_PLUGINS, PARALLEL_ON_ONE_NODE, parallel_job_gpu

from conftest import as_hydra_job, run_cli


def _records(sweep_dir) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep_dir.glob("*/run.json"))}


@pytest.mark.parametrize("launcher", [["hydra/launcher=parallel", "hydra.launcher.n_jobs=2"],
                                      ["hydra/launcher=processes", "hydra.launcher.gpus_per_node=0"]],
                         ids=["parallel-joblib", "processes-submitit"])
def test_a_sweep_on_a_launcher_with_processes_of_its_own(launcher, tmp_path, testbed_cache):
    """One job runs, the other is refused before load (deep_cache on FLUX): the summary is written, the
    failure is listed, the exit code is 1, and each job ran in its own process (no model reuse)."""
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", *launcher, "model=tiny-flux", "steps=2", "benchmark.min_timed_calls=1",
                      "+cache=none,deep_cache", f"hydra.sweep.dir={sweep}"], tmp_path, testbed_cache=testbed_cache)
    assert result.returncode == 1, result.stderr
    records = _records(sweep)
    assert [r["status"] for r in records.values()] == ["ok", "refused"]
    ok = records["000-cache=none"]
    assert ok["model_reused"] is False and "basic launcher" in ok["model_reuse_reason"]
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["jobs"] == 2 and summary["failed"] == 1
    assert "deep_cache" in (sweep / "summary.md").read_text()


def test_a_launcher_whose_plugin_is_missing_is_one_line(monkeypatch, capsys):
    import diffgentor.launchers as launchers
    from diffgentor.__main__ import main

    monkeypatch.setattr(launchers, "installed", lambda module: "ray" not in module)
    monkeypatch.setattr("sys.argv", ["diffgentor", "-m", "hydra/launcher=ray_cluster", "+cache=none,pab"])
    with pytest.raises(SystemExit) as ended:
        main()
    assert ended.value.code == 1
    assert capsys.readouterr().err.strip() == (
        "error: hydra/launcher=ray_cluster needs the package 'hydra-ray-launcher', which is not installed: "
        "pip install 'diffgentor[ray]'")


def test_every_preset_names_its_plugin():
    from diffgentor.config import CONFIG_DIR

    presets = {p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml")}
    assert presets and presets <= set(LAUNCHER_PLUGINS)


@pytest.mark.parametrize("target, num, expected", [
    (PARALLEL_ON_ONE_NODE[0], 5, 1),  # joblib: job 5 of a sweep on a 4-GPU node takes cuda:1
    (PARALLEL_ON_ONE_NODE[0], 2, 2),
    ("hydra._internal.core_plugins.basic_launcher.BasicLauncher", 5, None),  # one job at a time: cuda
    ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher", 5, None),  # SLURM gives each its own
])
def test_parallel_jobs_on_one_node_take_one_gpu_each(target, num, expected):
    with as_hydra_job(launcher={"_target_": target}, job={"num": num}):
        assert parallel_job_gpu(4) == expected
