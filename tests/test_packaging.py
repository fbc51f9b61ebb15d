"""Installed like any other package (issue 13): a wheel carries conf/ and experiments/, and runs from any folder.

The wheel is built from the tracked files, installed into a fresh virtual environment (which sees this
machine's torch and diffusers through --system-site-packages, and its own diffgentor first), and run from an
empty folder: the default job, the seed CLI, a checked-in experiment and a user's own experiment folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import REPO


def test_the_package_list_holds_every_package():
    declared = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "diffgentor").rglob("__init__.py")}
    assert found | {"diffgentor.conf"} == declared


def _tracked_copy(destination: Path) -> Path:
    """The files git tracks (what a clone has), copied: building never writes into the checkout."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source, target = REPO / name, destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            target.symlink_to(source.readlink())
        elif source.is_file():
            shutil.copy2(source, target)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    source = _tracked_copy(root / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(source), "-w", str(root / "dist")], check=True, timeout=600)
    (wheel,) = (root / "dist").glob("diffgentor-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], check=True,
                   timeout=300)
    subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True, timeout=600)
    return root / "venv" / "bin"


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_wheel_install_runs_from_any_folder(installed, tmp_path, testbed_cache):
    python, common = str(installed / "python"), ["progress=false", f"cache_dir={testbed_cache}"]
    where = _run([python, "-c", "import diffgentor.config as c; print(c.__file__); print(c.CONFIG_DIR)"], tmp_path)
    module, config_dir = where.stdout.split()
    assert str(installed.parent) in module and str(installed.parent) in config_dir, where.stdout  # not the checkout

    job = _run([python, "-m", "diffgentor", "steps=2", "benchmark.warmup=0", "hydra.run.dir=run", *common], tmp_path)
    assert job.returncode == 0, job.stderr
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["status"] == "ok" and len(record["images"]) == 1
    assert record["environment"]["diffgentor"] == "0.1.0" and record["environment"]["git_commit"] is None

    t2i = _run([str(installed / "diffgentor"), "t2i", "--backend", "diffusers", "--model_name", "shapes-flux",
                "--prompt", "a red circle", "--cache_type", "first_block_cache", "--dry_run", "--", *common],
               tmp_path)
    assert t2i.returncode == 0 and "first_block_cache" in t2i.stdout, t2i.stderr

    sweep = _run([python, "-m", "diffgentor", "-m", "+experiment=cache_methods", "model=shapes-flux",
                  "dry_run=true", *common], tmp_path)
    assert sweep.returncode == 0 and sweep.stdout.count("plan for a 'flux' pipeline") == 7, sweep.stderr

    mine = tmp_path / "my-configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "my_fbc.yaml").write_text("# @package _global_\ndefaults:\n  - /cache: first_block_cache\n"
                                      "steps: 3\n")
    own = _run([python, "-m", "diffgentor", "--config-dir", "my-configs", "+experiment=my_fbc", "dry_run=true",
                *common], tmp_path)
    assert own.returncode == 0 and "first_block_cache" in own.stdout, own.stderr
