"""Tuning studies (`-m +experiment=tune_<cache>`, Hydra's Optuna sweeper): trials return latency and PSNR
against the references, a failed trial stays a failed trial, and the study ends with its Pareto-optimal trials
and a recommendation that runs as written."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from diffgentor.config import resolve_config
from diffgentor.errors import MissingPackageError
from diffgentor.launchers import check_sweeper_plugin
from diffgentor.run import prepare
from diffgentor.tune import PSNR_CAP_DB, objectives

from conftest import REPO, compose_config, run_cli

STUDIES = sorted(p.stem for p in (REPO / "experiments").glob("tune_*.yaml"))


def test_a_study_returns_objectives_survives_failed_trials_and_recommends(tmp_path, testbed_cache):
    # seeded TPE: of the first four thresholds drawn from [-1.5, 1], two are negative (refused trials)
    result = run_cli(["-m", "+experiment=tune_first_block_cache", "model=tiny-flux", "steps=8", "threads=1",
                      "num_images_per_prompt=1", "benchmark.min_timed_calls=2", "hydra.sweeper.n_trials=4",
                      "cache.threshold=interval(-1.5, 1)", f"quality.dir={tmp_path / 'refs'}",
                      "hydra.sweep.dir=study"], tmp_path, testbed_cache=testbed_cache)
    study = tmp_path / "study"
    report = json.loads((study / "tune.json").read_text())
    statuses = [trial["status"] for trial in report["trials"]]
    assert statuses.count("refused") == 2 and statuses.count("ok") == 2, result.stderr
    assert result.returncode == 1 and "2 of 4 jobs failed" in result.stderr  # recorded, not a crash
    finished = [t for t in report["trials"] if t["status"] == "ok"]
    # the sweeper got each finished trial's objectives: Optuna's own results list them
    solutions = yaml.safe_load((study / "optimization_results.yaml").read_text())["solutions"]
    returned = {round(s["params"]["cache.threshold"], 9): s["values"] for s in solutions}
    for trial in finished:
        if trial["pareto"]:
            assert returned[round(trial["cache.threshold"], 9)] == pytest.approx(
                [trial["latency_median_s"], trial["psnr_db"]])
    # references made once for the study, reused by the later trial
    made = [json.loads((study / t["folder"] / "run.json").read_text())["quality"]["references"] for t in finished]
    assert [m["generated"] for m in made] == [1, 0]
    best = next(t for t in report["trials"] if t["recommended"])
    assert best["psnr_db"] >= 30 and best["latency_median_s"] == min(t["latency_median_s"] for t in finished
                                                                      if t["psnr_db"] >= 30)
    assert f"cache.threshold={best['cache.threshold']}" in report["verdict"]
    # tuned.yaml is an experiment that composes to the recommended setting
    (tmp_path / "configs" / "experiment").mkdir(parents=True)
    (tmp_path / "configs" / "experiment" / "tuned.yaml").write_text((study / "tuned.yaml").read_text())
    shown = run_cli(["--cfg", "job", "--config-dir", str(tmp_path / "configs"), "+experiment=tuned"], tmp_path)
    job = yaml.safe_load(shown.stdout)
    assert job is not None, shown.stderr
    assert job["cache"]["name"] == "first_block_cache" and job["model"]["name"] == "tiny-flux"
    assert math.isclose(job["cache"]["threshold"], best["cache.threshold"])
    assert "recommended" in (study / "tune.md").read_text()


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_searches_settings_its_cache_has(study):
    cfg = compose_config([f"+experiment={study}", "hydra.sweeper.n_trials=1"])
    assert cfg.quality.name == "reference" and cfg.tune.min_psnr == 30
    searched = list(compose_config_hydra(study).sweeper.params)
    assert searched and all(key.startswith("cache.") and key.split(".", 1)[1] in cfg.cache for key in searched)


def compose_config_hydra(study: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=[f"+experiment={study}"], return_hydra_config=True).hydra


def test_objectives_are_latency_and_capped_psnr_or_nothing():
    timings = {"latency_s": {"median": 0.5}}
    assert objectives({"timings": timings, "quality": {"quality_pairs": 2, "psnr_db": 31.5}}) == (0.5, 31.5)
    assert objectives({"timings": timings, "quality": {"quality_pairs": 2, "psnr_db": None, "identical": True}}) \
        == (0.5, PSNR_CAP_DB)
    assert objectives({"timings": timings, "quality": {"quality_pairs": 0}}) is None
    assert objectives({"timings": timings, "quality": {"quality_pairs": 1, "psnr_db": float("nan")}}) is None
    assert objectives({"timings": {}, "quality": {"quality_pairs": 1, "psnr_db": 40.0}}) is None


def test_a_study_without_references_is_refused_before_load(make_config):
    run_cfg = resolve_config(make_config(["model=tiny-flux", "+experiment=tune_first_block_cache", "quality=none"]))
    assert any("add +quality=reference" in problem for problem in prepare(run_cfg).plan.problems)


def test_a_study_without_the_sweeper_plugin_names_the_extra(monkeypatch):
    monkeypatch.setattr("diffgentor.launchers.installed", lambda module: False)
    with pytest.raises(MissingPackageError, match=r"pip install 'diffgentor\[tune\]'"):
        check_sweeper_plugin(["-m", "+experiment=tune_first_block_cache"])
    check_sweeper_plugin(["-m", "+experiment=cache_methods"])  # not a study: nothing to check
