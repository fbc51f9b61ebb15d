"""The embedded testbeds: built offline, loaded through the ordinary from_pretrained path, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from diffgentor import testbed
from diffgentor.testbed import (
    TESTBED_CALL_KWARGS,
    TESTBED_DEFAULTS,
    TESTBED_NAMES,
    TESTBED_SIZE_MULTIPLE_PX,
    build_pipeline,
    materialize,
)
from diffgentor.testbed import store

EXPECTED_PIPELINE = {
    "tiny-flux": "FluxPipeline",
    "tiny-sd": "StableDiffusionPipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "tiny-pixart": "PixArtAlphaPipeline",
    "tiny-qwenimage": "QwenImagePipeline",
}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("testbeds")


@pytest.fixture(scope="module")
def loaded(cache_root):
    """Each testbed materialized and loaded once per module; loading is the path a hub id takes."""
    pipes = {}

    def load(name: str) -> DiffusionPipeline:
        if name not in pipes:
            pipe = DiffusionPipeline.from_pretrained(materialize(name, cache_root), use_safetensors=True)
            pipe.set_progress_bar_config(disable=True)
            pipes[name] = pipe
        return pipes[name]

    return load


def _generate(pipe: DiffusionPipeline, name: str, seed: int) -> np.ndarray:
    defaults = TESTBED_DEFAULTS[name]
    image = pipe(
        "a red cube on a blue floor",
        num_inference_steps=2,
        guidance_scale=defaults["guidance_scale"],
        height=defaults["height"],
        width=defaults["width"],
        generator=torch.Generator().manual_seed(seed),
        **TESTBED_CALL_KWARGS[name],
    ).images[0]
    return np.asarray(image)


def _modules(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {key: part for key, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


def test_names_and_defaults_agree():
    assert TESTBED_NAMES == ("tiny-flux", "tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-qwenimage")
    for name in TESTBED_NAMES:
        defaults = TESTBED_DEFAULTS[name]
        assert set(defaults) == {"steps", "guidance_scale", "height", "width"}
        assert (defaults["height"], defaults["width"]) == (64, 64)
        assert defaults["height"] % TESTBED_SIZE_MULTIPLE_PX[name] == 0
        assert name in TESTBED_CALL_KWARGS


def test_unknown_name_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="tiny-flux.*tiny-pixart"):
        materialize("tiny-nope", tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", TESTBED_NAMES)
def test_loads_as_its_pipeline_class_in_eval_mode(loaded, name):
    pipe = loaded(name)
    assert type(pipe).__name__ == EXPECTED_PIPELINE[name]
    for key, module in _modules(pipe).items():
        training = [sub for sub, part in module.named_modules() if part.training]
        assert not training, f"{name}.{key} has modules in train mode: {training[:3]}"
        assert all(p.dtype == torch.float32 for p in module.parameters())


@pytest.mark.parametrize("name", TESTBED_NAMES)
def test_generates_64px_deterministically(loaded, name):
    pipe = loaded(name)
    first = _generate(pipe, name, seed=0)
    assert first.shape == (64, 64, 3)
    np.testing.assert_array_equal(first, _generate(pipe, name, seed=0))
    assert (first != _generate(pipe, name, seed=1)).any(), "the seed should change the image"


@pytest.mark.parametrize("name", TESTBED_NAMES)
def test_saved_weights_equal_a_fresh_in_memory_build(loaded, name):
    """Round trip through safetensors is exact, and building twice gives the same seeded weights."""
    saved, fresh = _modules(loaded(name)), _modules(build_pipeline(name))
    assert saved.keys() == fresh.keys()
    for key in saved:
        saved_state, fresh_state = saved[key].state_dict(), fresh[key].state_dict()
        assert saved_state.keys() == fresh_state.keys(), key
        for tensor_name, tensor in saved_state.items():
            assert torch.equal(tensor, fresh_state[tensor_name]), f"{name}.{key}.{tensor_name}"


def test_pixart_needs_its_call_kwargs_at_64px(loaded):
    """Resolution binning would silently render 256 px; the recipe makes it fail loudly instead."""
    with pytest.raises(ValueError, match="Invalid sample size"):
        loaded("tiny-pixart")("a cube", num_inference_steps=1, height=64, width=64)
    assert TESTBED_CALL_KWARGS["tiny-pixart"]["use_resolution_binning"] is False


def test_denoisers_have_repeated_blocks_for_caches(loaded):
    assert len(loaded("tiny-flux").transformer.transformer_blocks) == 2
    assert len(loaded("tiny-flux").transformer.single_transformer_blocks) == 4
    assert len(loaded("tiny-sd3").transformer.transformer_blocks) == 4
    assert len(loaded("tiny-pixart").transformer.transformer_blocks) == 4
    assert len(loaded("tiny-qwenimage").transformer.transformer_blocks) == 4
    for name in ("tiny-sd", "tiny-sdxl"):
        unet = loaded(name).unet
        assert sum(hasattr(block, "attentions") for block in unet.down_blocks) >= 2
        assert sum(hasattr(block, "attentions") for block in unet.up_blocks) >= 2


def test_qwen_tokenizer_spells_the_template_prefix_in_the_tokens_the_pipeline_drops(loaded):
    """QwenImagePipeline drops the first prompt_template_encode_start_idx (34) hidden states: the system prefix
    in the real vocab. The tiny tokenizer must give the same count, or prompt states would be cut or kept."""
    pipe = loaded("tiny-qwenimage")
    prefix = pipe.prompt_template_encode.split("{}")[0]
    tokens = pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(prefix).input_ids)
    assert len(tokens) == pipe.prompt_template_encode_start_idx == 34
    assert tokens[:4] == ["<|im_start|>", "system", "Ċ", "Describe"] and tokens[-3:] == ["<|im_start|>", "user", "Ċ"]
    prompt_ids = pipe.tokenizer(pipe.prompt_template_encode.format("a red cube")).input_ids
    assert prompt_ids[:34] == pipe.tokenizer(prefix).input_ids, "the prompt must not merge into the prefix"


def test_qwen_configs_agree_with_each_other(loaded):
    pipe = loaded("tiny-qwenimage")
    transformer, vae, text = pipe.transformer.config, pipe.vae.config, pipe.text_encoder.config.text_config
    assert transformer.joint_attention_dim == text.hidden_size
    assert sum(transformer.axes_dims_rope) == transformer.attention_head_dim
    assert transformer.in_channels == 4 * vae.z_dim and transformer.out_channels == vae.z_dim
    assert pipe.vae_scale_factor == 8
    assert text.vocab_size == len(pipe.tokenizer) and text.pad_token_id == pipe.tokenizer.pad_token_id


def test_materialize_twice_reuses_the_folder(cache_root, monkeypatch):
    folder = materialize("tiny-pixart", cache_root)
    stamp_ns = (folder / "model_index.json").stat().st_mtime_ns

    def no_rebuild(recipe):
        raise AssertionError("materialize rebuilt a complete testbed")

    monkeypatch.setattr(store, "build_recipe", no_rebuild)
    assert materialize("tiny-pixart", cache_root) == folder
    assert (folder / "model_index.json").stat().st_mtime_ns == stamp_ns


def test_losing_a_build_race_keeps_the_winner(tmp_path, monkeypatch):
    """A builder that finds the folder taken at rename time returns it and leaves no temp folder."""
    winner = materialize("tiny-pixart", tmp_path)
    stamp_ns = (winner / "model_index.json").stat().st_mtime_ns
    calls = []
    real_is_complete = store.is_complete

    def first_look_misses(folder):
        calls.append(folder)
        return len(calls) > 1 and real_is_complete(folder)

    monkeypatch.setattr(store, "is_complete", first_look_misses)
    assert materialize("tiny-pixart", tmp_path) == winner
    assert [p.name for p in tmp_path.iterdir()] == [winner.name]
    assert (winner / "model_index.json").stat().st_mtime_ns == stamp_ns


def test_folder_name_follows_library_versions(monkeypatch):
    before = store.recipe_hash("tiny-sd")
    monkeypatch.setattr(store.diffusers, "__version__", "0.0.0-other")
    assert store.recipe_hash("tiny-sd") != before


def test_public_interface():
    assert set(testbed.__all__) >= {"TESTBED_NAMES", "TESTBED_DEFAULTS", "materialize"}
