"""Shared fixtures: the real config composed with Hydra's compose API, and testbeds built once per session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

# The one place the suite sets torch's CPU threads: before torch is imported here, and inherited by every
# `python -m diffgentor` the tests start (a run's `threads: null` honours OMP_NUM_THREADS). These tests check
# outputs, not speed; on a shared 2-core machine two threads per process oversubscribe the cores (a tiny-flux
# call measured 0.4 s at one thread vs 2.3-9.6 s at two under load).
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from diffgentor.config import register_configs

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

register_configs()


@pytest.fixture(scope="session")
def testbed_cache(tmp_path_factory) -> Path:
    """One testbed cache for the whole session (each testbed is built once, then loaded from disk)."""
    return tmp_path_factory.mktemp("testbed-cache")


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """The config `python -m diffgentor OVERRIDES` would run with (hydra.* keys included)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []), return_hydra_config=False)


@contextlib.contextmanager
def as_hydra_job(**hydra_settings: Any) -> Iterator[None]:
    """Run the block as inside a job of `python -m diffgentor` whose hydra.* node has these settings merged in
    (e.g. mode, launcher, job={"num": 3}); Hydra's own state is put back after."""
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True)
    with open_dict(cfg):
        for key, value in hydra_settings.items():
            OmegaConf.update(cfg.hydra, key, value, merge=True)
    saved = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)
    try:
        yield
    finally:
        HydraConfig.instance().cfg = saved


@pytest.fixture
def make_config(testbed_cache):
    """compose_config + test-friendly settings: testbed cache in tmp, no progress bars."""

    def make(overrides: list[str] | None = None) -> DictConfig:
        cfg = compose_config(overrides)
        with open_dict(cfg):
            cfg.cache_dir = str(testbed_cache)
            cfg.progress = False
        return cfg

    return make


@pytest.fixture(scope="session")
def load_testbed(testbed_cache):
    """Load a testbed pipeline by name through the ordinary from_pretrained path (fp32, CPU)."""
    import torch

    from diffgentor.testbed import materialize
    from diffusers import DiffusionPipeline

    def load(name: str):
        folder = materialize(name, testbed_cache)
        return DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)

    return load


def run_cli(args: list[str], cwd: Path, env: dict | None = None, testbed_cache: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m diffgentor ARGS` as a user would, in `cwd`; returns the completed process."""
    full_env = {**os.environ, **(env or {})}
    extra = [f"cache_dir={testbed_cache}"] if testbed_cache else []
    return subprocess.run([sys.executable, "-m", "diffgentor", *args, *extra, "progress=false"],
                          cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
