"""Build a testbed once into a cache folder that `DiffusionPipeline.from_pretrained` reads like a hub id.

The folder name carries a hash of the recipe and the library versions, so a changed recipe or an
upgraded library builds afresh instead of reusing stale weights. Builds are concurrency-safe: each
builder writes a private temp folder and renames it into place; the loser of a race discards its copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import diffusers
import torch
import transformers
from transformers.utils import logging as transformers_logging

from diffgentor.testbed.build import build_recipe
from diffgentor.testbed.recipes import RECIPES, recipe_as_dict

# Bump when build.py changes how a recipe becomes weights (the recipe data alone would not show it).
BUILD_FORMAT = 1
PROVENANCE_FILE = "testbed.json"
#: Trained testbeds ship as package data in weights/<name>/ (made by `python -m diffgentor.testbed.train`);
#: they are loaded from there as they are: nothing to build, nothing to cache.
SHIPPED_WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights"
SHIPPED_TESTBEDS: tuple[str, ...] = ("shapes-flux",)


def recipe_for(name: str):
    if name not in RECIPES:
        raise ValueError(f"unknown testbed {name!r}; choose one of {tuple(RECIPES) + SHIPPED_TESTBEDS}")
    return RECIPES[name]


def shipped_folder(name: str) -> pathlib.Path:
    folder = SHIPPED_WEIGHTS / name
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"testbed {name!r}: its trained weights are missing from {folder}; reinstall diffgentor "
                         f"or retrain them with `python -m diffgentor.testbed.train --out {folder}`")
    return folder


def provenance(name: str) -> dict:
    """Everything the built weights depend on; hashed into the folder name and saved beside the weights."""
    return {
        "name": name,
        "build_format": BUILD_FORMAT,
        "recipe": recipe_as_dict(recipe_for(name)),
        "versions": {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
        },
    }


def recipe_hash(name: str) -> str:
    text = json.dumps(provenance(name), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def _no_save_progress_bars():
    """transformers draws a "Writing model shards" bar per text encoder; a 1 s build needs none."""
    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()


def is_complete(folder: pathlib.Path) -> bool:
    """A folder only appears by rename after a full save, so its provenance file marks it complete."""
    return (folder / PROVENANCE_FILE).is_file() and (folder / "model_index.json").is_file()


def _check_every_component_saved(folder: pathlib.Path, name: str) -> None:
    """A build is renamed into place only when every component wrote its files: transformers' save_pretrained
    silently writes nothing on a torch.distributed rank other than 0 (measured under torchrun: empty
    text_encoder folders in a folder that then looked complete to every later run)."""
    index = json.loads((folder / "model_index.json").read_text())
    empty = [component for component, entry in index.items()
             if isinstance(entry, list) and entry[0] is not None and not any((folder / component).glob("*"))]
    if empty:
        raise RuntimeError(f"testbed {name}: the build wrote nothing for {', '.join(empty)} (a torch.distributed "
                           "rank other than 0 saves no transformers weights); build it in a single process first")


def materialize(name: str, cache_root: pathlib.Path) -> pathlib.Path:
    """Return a local diffusers-format folder for testbed `name`, building it once (save_pretrained) under
    cache_root/<name>-<hash> where hash covers the recipe + torch/diffusers/transformers versions.
    Unknown name -> ValueError listing TESTBED_NAMES. A shipped trained testbed returns its package folder."""
    if name in SHIPPED_TESTBEDS:
        return shipped_folder(name)
    recipe = recipe_for(name)
    cache_root = pathlib.Path(cache_root)
    target = cache_root / f"{name}-{recipe_hash(name)}"
    if is_complete(target):
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=cache_root))
    staging.chmod(0o755)  # mkdtemp makes it owner-only; a shared cache must stay readable
    try:
        with _no_save_progress_bars():
            build_recipe(recipe).save_pretrained(staging, safe_serialization=True)
        _check_every_component_saved(staging, name)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance(name), indent=2, default=str) + "\n")
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its build into place first; a non-empty target refuses ours.
            if not is_complete(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
