"""The config tree composes as users call it: defaults, `+group=option`, typos rejected at compose time."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from diffgentor.config import Dtype, RunConfig
from diffgentor.errors import ConfigError
from diffgentor.run import resolve_config

from conftest import compose_config


def test_defaults_are_the_trained_shapes_flux_and_auto_precision():
    cfg = compose_config()
    assert cfg.model.name == cfg.model.testbed == "shapes-flux"
    assert cfg.precision.dtype == Dtype.auto
    assert cfg.precision.tf32 is True
    # add-on groups are absent from the defaults
    assert cfg.cache is None and cfg.compile is None and cfg.attention is None and cfg.memory is None
    # generation defaults come from the model entry
    assert cfg.steps == cfg.model.steps and cfg.height == cfg.model.height


def test_resolves_to_typed_run_config():
    run_cfg = resolve_config(compose_config(["model=tiny-sd", "steps=3"]))
    assert isinstance(run_cfg, RunConfig)
    assert run_cfg.model.family == "sd" and run_cfg.steps == 3


@pytest.mark.parametrize("group", ["cache", "compile", "attention", "memory"])
def test_plus_none_appends_each_addon_group(group):
    cfg = compose_config([f"+{group}=none"])
    assert cfg[group].name == "none"


def test_addon_group_without_plus_is_rejected():
    with pytest.raises(ConfigCompositionException, match="cache"):
        compose_config(["cache=none"])


@pytest.mark.parametrize(
    "override, error",
    [
        ("+cache=first_blok_cache", ConfigCompositionException),
        ("model=no-such-model", ConfigCompositionException),
        ("precision=bf61", ConfigCompositionException),
        ("steps=abc", ValidationError),
        ("precision.dtype=fp8", ValidationError),
        ("no_such_key=1", ConfigKeyError),
        ("model.no_such_key=1", ConfigKeyError),
    ],
)
def test_typos_fail_at_compose_time(override, error):
    with pytest.raises((error, ConfigCompositionException)):
        compose_config([override])


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-qwenimage",
                                  "flux-dev", "flux-schnell", "sd3-medium", "sdxl-base", "sd15"])
def test_every_model_entry_composes_with_a_source_and_family(name):
    cfg = compose_config([f"model={name}"])
    assert cfg.model.testbed or cfg.model.path
    assert cfg.model.family


def test_hub_entries_name_their_hub_ids():
    assert compose_config(["model=flux-dev"]).model.path == "black-forest-labs/FLUX.1-dev"
    assert compose_config(["model=sdxl-base"]).model.path == "stabilityai/stable-diffusion-xl-base-1.0"


def test_config_round_trips_to_yaml():
    cfg = compose_config(["+cache=none", "seed=7"])
    text = OmegaConf.to_yaml(cfg, resolve=True)
    assert "seed: 7" in text


def test_resolution_error_is_a_config_error(monkeypatch):
    cfg = compose_config()
    OmegaConf.set_struct(cfg, False)
    cfg.steps = "${dg.env:DG_TEST_STEPS,4}"
    monkeypatch.setenv("DG_TEST_STEPS", "four")
    with pytest.raises(ConfigError, match="DG_TEST_STEPS='four' is not an integer"):
        resolve_config(cfg)
