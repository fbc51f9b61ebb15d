"""The shipped trained testbed `shapes-flux`: it loads like any model, draws what the caption says, and a
residual cache (FirstBlockCache) really skips steps on it, which random-weight testbeds never do.

Quality is judged by pixel statistics, never by a learned model (diffgentor/testbed/shapes.py):
colours by nearest palette colour (border frame -> background, the rest -> foreground), shapes by
template matching (IoU of each shape's template drawn at the foreground mask's centroid and area).
The captions are held out: each (foreground, background, shape) triple is never drawn in training (its colour
pair is, with the other shapes, and so is the swapped triple).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from diffusers.hooks import FirstBlockCacheConfig
from PIL import Image

from conftest import compose_config, run_cli
from diffgentor.pipeline import resolve_source
from diffgentor.testbed import materialize, shapes
from diffgentor.testbed.store import SHIPPED_WEIGHTS
from diffgentor.testbed.train import (
    EVAL_SEED,
    MAX_SEQUENCE_LENGTH,
    STEPS,
    all_train_captions,
    evaluate_heldout,
    generate,
)

#: Measured on the shipped weights: see the numbers in weights/shapes-flux/training.json. The bars sit
#: below them with room for float differences across machines, and far above what random weights score.
MIN_COLOUR_ACCURACY = 0.8
MIN_SHAPE_ACCURACY = 0.5  # chance is 0.25 (4 shapes)
FBC_THRESHOLD = 0.2  # the seed's default threshold for +cache=first_block_cache


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = materialize("shapes-flux", tmp_path_factory.mktemp("unused-cache"))
    pipe = DiffusionPipeline.from_pretrained(folder, dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_resolves_to_the_shipped_folder_without_building(tmp_path):
    folder = materialize("shapes-flux", tmp_path)
    assert folder == SHIPPED_WEIGHTS / "shapes-flux"
    assert not any(tmp_path.iterdir()), "a shipped testbed must not build anything into the cache"
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    size_bytes = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size_bytes < 8 * 2**20, f"shipped weights are {size_bytes / 2**20:.1f} MiB; keep them under 8"
    assert sorted(p.parent.name for p in folder.glob("*/*.safetensors")) == [
        "text_encoder", "text_encoder_2", "transformer", "vae"]


def test_model_config_resolves_as_flux(make_config):
    cfg = make_config(["model=shapes-flux"])
    assert (cfg.steps, cfg.height, cfg.width) == (STEPS, 64, 64)
    assert cfg.model.call_kwargs.max_sequence_length == MAX_SEQUENCE_LENGTH
    source = resolve_source(cfg.model, cfg.cache_dir)
    assert source.family == "flux" and source.pipeline_class == "FluxPipeline"


def test_python_m_diffgentor_draws_the_prompt(tmp_path):
    """The command line, as a user runs it, draws the default prompt (a small red circle on a blue background)."""
    assert compose_config(["model=shapes-flux"]).prompt == "a small red circle on a blue background"
    result = run_cli(["model=shapes-flux", "num_images_per_prompt=4", "batch_size=4"], tmp_path)
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("outputs/*/*/images/*.png"))
    assert len(files) == 4
    drawn = [shapes.judge_colours(np.asarray(Image.open(f).convert("RGB"))) for f in files]
    assert sum(d == ("red", "blue") for d in drawn) >= 3, drawn


def test_heldout_captions_were_never_trained_on():
    train = set(all_train_captions())
    heldout = shapes.heldout_scenes()
    for scene in heldout:
        assert scene.caption() not in train
        assert (scene.colour, scene.background, scene.shape) not in shapes.TRAIN_TRIPLES
        # composition, not novelty: the pair is trained with other shapes, the swapped triple is trained
        assert any((scene.colour, scene.background) == t[:2] for t in shapes.TRAIN_TRIPLES)
        assert (scene.background, scene.colour, scene.shape) in shapes.TRAIN_TRIPLES
    assert len({(s.colour, s.background) for s in heldout}) == len(heldout) == 32
    assert sorted(s.shape for s in heldout) == sorted(shapes.SHAPES * 8)


def test_caption_grammar():
    assert shapes.caption("circle", "red", "blue", "small") == "a small red circle on a blue background"
    assert shapes.caption("star", "orange", "white") == "an orange star on a white background"
    # no size word = medium: a caption fixes the picture
    scene = shapes.Scene("circle", "red", "blue", say_size=False)
    assert (scene.size, scene.caption()) == ("medium", "a red circle on a blue background")


def test_judges_are_exact_on_drawn_scenes():
    rng = np.random.default_rng(7)
    scenes = [shapes.sample_scene(rng, triples=shapes.HELD_OUT_TRIPLES) for _ in range(120)]
    images = shapes.render_batch(scenes)
    assert [shapes.judge_colours(i) for i in images] == [(s.colour, s.background) for s in scenes]
    assert [shapes.judge_shape(i) for i in images] == [s.shape for s in scenes]


def test_judges_reject_a_blank_image():
    blank = np.zeros((64, 64, 3), np.uint8) + np.asarray(shapes.PALETTE["blue"], np.uint8)
    assert shapes.judge_colours(blank) == (None, "blue")
    assert shapes.judge_shape(blank) is None


@pytest.fixture(scope="module")
def heldout(pipe):
    return evaluate_heldout(pipe)[0]


def test_heldout_colours_are_drawn_right(heldout):
    assert heldout["colour_accuracy"] >= MIN_COLOUR_ACCURACY, heldout


def test_heldout_shapes_are_drawn_right(heldout):
    assert heldout["shape_accuracy"] >= MIN_SHAPE_ACCURACY, heldout


def test_generation_is_deterministic(pipe):
    caption = ["a large white star on an orange background"]
    first = generate(pipe, caption, [EVAL_SEED], steps=4)
    second = generate(pipe, caption, [EVAL_SEED], steps=4)
    assert np.array_equal(first, second)


# ---- FirstBlockCache on a trained model -------------------------------------------------------------


def block_linear_macs(transformer: torch.nn.Module):
    """Forward hooks that add up the multiply-accumulates of every Linear inside the DiT blocks that really
    ran. FirstBlockCache skips a block by never calling its original forward, so skipped layers add nothing."""
    total = {"macs": 0}

    def count(module, inputs, output):
        total["macs"] += inputs[0].numel() // module.in_features * module.in_features * module.out_features

    blocks = [*transformer.transformer_blocks, *transformer.single_transformer_blocks]
    handles = [m.register_forward_hook(count) for b in blocks for m in b.modules() if isinstance(m, torch.nn.Linear)]
    return total, handles


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def first_block_cache_effect(pipe, threshold: float = FBC_THRESHOLD, n_images: int = 16) -> dict:
    """compute_fraction (block Linear MACs run with the cache / without) and PSNR of cached vs uncached images,
    at the model's 28 steps, on the first n held-out captions, one batch."""
    scenes = shapes.heldout_scenes()[:n_images]
    captions, seeds = [s.caption() for s in scenes], [EVAL_SEED + i for i in range(n_images)]
    counter, handles = block_linear_macs(pipe.transformer)
    try:
        reference = generate(pipe, captions, seeds)
        full_macs, counter["macs"] = counter["macs"], 0
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        try:
            cached = generate(pipe, captions, seeds)
        finally:
            pipe.transformer.disable_cache()
    finally:
        for handle in handles:
            handle.remove()
    return {"compute_fraction": counter["macs"] / full_macs, "psnr_db": psnr_db(cached, reference)}


def test_first_block_cache_skips_steps_at_default_threshold(pipe):
    effect = first_block_cache_effect(pipe)
    # Measured on the shipped weights: compute_fraction 0.375, PSNR 51.0 dB. The random tiny-flux skips
    # nothing at its 8 steps at this threshold.
    assert effect["compute_fraction"] < 0.6, effect
    assert effect["psnr_db"] > 35.0, effect
