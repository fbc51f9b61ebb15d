"""torch.compile on the testbeds: same output as eager (fp32, 1e-4) and measured evidence.

Each cold compile costs 20-40 s on a 2-core CPU, so there are few: the whole tiny-Flux transformer (mode
default, with fused QKV and attention, whose call counters run in the eager evidence pass only) and regional compile of the tiny-SD UNet's repeated blocks (the seed's
`transformer` component mapped to `unet`).
"""

from __future__ import annotations

import json

import pytest
import torch

from diffgentor.optimize import apply_optimizations
from diffgentor.run import resolve_config

from test_optimizers import generate, max_diff


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Start from empty dynamo caches: code objects compiled by earlier tests in this process (the same
    transformer forward, on another module instance) would otherwise add guard-failure recompiles here."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.slow
def test_full_compile_tiny_flux(load_testbed, make_config):
    pipe = load_testbed("tiny-flux")
    reference = generate(pipe, "tiny-flux", steps=3)
    run_cfg = resolve_config(make_config(["+compile=default", "+attention=native", "fuse_qkv=true"]))
    applied = apply_optimizations(pipe, run_cfg)
    output = generate(pipe, "tiny-flux", steps=3)
    assert max_diff(reference, output) < 1e-4
    applied.before_timed_calls(pipe)  # as a run does after its warmup; the call timer stops there
    with applied.evidence_pass(pipe):  # the counters, eager, as a run's last pass
        evidence_output = generate(pipe, "tiny-flux", steps=3)
    assert max_diff(reference, evidence_output) < 1e-4
    records = {r["name"]: r for r in applied.evidence(pipe)}

    proof = records["compile"]["evidence"]
    assert proof["components"] == {"transformer": "transformer"}
    # one graph for the three compiled calls: nothing of ours is traced into it, and Flux has no graph break
    assert proof["dynamo"]["graphs"] == proof["dynamo"]["frames_compiled"] == 1
    assert proof["dynamo"]["graph_breaks"] == 0
    timing = proof["timing"]["transformer"]
    assert timing["calls"] == 3 and timing["first_call_s"] > timing["steady_call_s"] > 0
    assert proof["inductor"] == {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                                 "epilogue_fusion": False, "coordinate_descent_check_all_directions": True}
    # the counters ran in the evidence pass only (eager), never inside the compiled graph
    assert records["attention"]["evidence"]["dispatcher_calls"] == 3 * 6  # 3 steps x (2 double + 4 single blocks)
    assert records["fuse_qkv"]["evidence"]["fused_layer_calls"]["transformer"] == 3 * 8
    assert "no 4-D (conv) weights" in records["channels_last"]["warnings"][0]

    applied.remove(pipe)
    assert pipe.transformer._compiled_call_impl is None


@pytest.mark.slow
def test_regional_compile_maps_transformer_to_unet(load_testbed, make_config):
    pipe = load_testbed("tiny-sd")
    reference = generate(pipe, "tiny-sd", steps=3)
    applied = apply_optimizations(pipe, resolve_config(make_config(["model=tiny-sd", "+compile=regional",
                                                                    "compile.mode=default"])))
    output = generate(pipe, "tiny-sd", steps=3)
    assert max_diff(reference, output) < 1e-4
    records = {r["name"]: r for r in applied.evidence(pipe)}
    proof = records["compile"]["evidence"]
    assert proof["components"] == {"transformer": "unet"} and proof["regional"]
    assert proof["compiled_modules"]["unet"] == sum(
        type(m).__name__ == "BasicTransformerBlock" for m in pipe.unet.modules()) > 0
    assert proof["dynamo"]["graphs"] > 0 and proof["timing"]["unet"]["calls"] == 3
    channels_last = records["channels_last"]["evidence"]
    assert channels_last["conv_weights_channels_last"]["unet"] == channels_last["conv_weights_total"]["unet"] > 0
    assert torch.isfinite(output).all()


@pytest.mark.slow
def test_regional_compile_tiny_qwenimage(load_testbed, make_config):
    """The compat table's compile / channels_last / attention / tf32 claims for qwenimage, in one cold compile."""
    pipe = load_testbed("tiny-qwenimage")
    reference = generate(pipe, "tiny-qwenimage", steps=3)
    run_cfg = resolve_config(make_config(["model=tiny-qwenimage", "+compile=regional", "compile.mode=default",
                                          "+attention=native"]))
    applied = apply_optimizations(pipe, run_cfg)
    output = generate(pipe, "tiny-qwenimage", steps=3)
    assert max_diff(reference, output) < 1e-4
    applied.before_timed_calls(pipe)
    with applied.evidence_pass(pipe):
        generate(pipe, "tiny-qwenimage", steps=3)
    records = {r["name"]: r for r in applied.evidence(pipe)}
    proof = records["compile"]["evidence"]
    assert proof["components"] == {"transformer": "transformer"} and proof["regional"]
    assert proof["compiled_modules"]["transformer"] == len(pipe.transformer.transformer_blocks) == 4
    assert proof["dynamo"]["graphs"] > 0 and proof["timing"]["transformer"]["calls"] == 3
    assert records["attention"]["evidence"]["dispatcher_calls"] == 3 * 4  # 3 steps x 4 blocks, evidence pass
    assert "no 4-D (conv) weights" in records["channels_last"]["warnings"][0]  # a DiT: nothing to convert
    assert records["tf32"]["applied"]
    applied.remove(pipe)


# ---- compile + cache: nothing measured inside the timed calls, and no recompile there (issue 11) -----------

@pytest.mark.slow
@pytest.mark.parametrize("compile_overrides", [["+compile=default", "compile.backend=eager"],
                                               ["+compile=regional", "compile.mode=default"]],
                         ids=["full-traced", "regional-inductor"])
def test_compile_with_a_cache_is_compile_clean_in_the_timed_calls(compile_overrides, make_config, tmp_path):
    """FirstBlockCache's evidence comes from the evidence pass; the timed calls run under dynamo's
    fail_on_recompile stance (a recompile would fail the run) and dynamo's counters say 0 new graphs there."""
    from diffgentor.run import execute

    data = execute(make_config([*compile_overrides, "+cache=first_block_cache", "steps=8", "batch_size=2",
                                "num_images_per_prompt=3", "benchmark.repeats=2"]), tmp_path, [])
    assert data["status"] == "ok"
    assert data["timings"]["compiled_in_timed_calls"] == {"graphs": 0, "frames_compiled": 0}
    records = {r["name"]: r for r in data["optimizations"]}
    cache = records["first_block_cache"]["evidence"]
    assert cache["measured_in"] == "evidence pass" and cache["generations"] == 1 and cache["steps_run"] == 8
    assert 0 < cache["compute_fraction"] < 1
    assert records["compile"]["evidence"]["dynamo"]["graphs"] > 0
    assert data["evidence_pass"]["images"] == 2  # the first batch (a last batch of 1 was warmed up too)
    # the call timer measured the warmup only (2 generations, raised for compile + cache, x 2 batch sizes x 8
    # steps), not the 2 x 2 timed calls after it
    timing = records["compile"]["evidence"]["timing"]["transformer"]
    assert timing["measured_in"] == "warmup" and timing["calls"] == 2 * 2 * 8
    assert data["timings"]["warmup_passes"] == 2


@pytest.fixture(scope="module")
def deep_flux(testbed_cache, tmp_path_factory):
    """tiny-flux with 4 dual and 12 single blocks (16 > dynamo's recompile limit of 8), random weights, saved as
    a diffusers folder and loaded through `model.path`: a guard per block would exhaust the limit here."""
    import shutil

    from diffusers import FluxTransformer2DModel

    from diffgentor.testbed import materialize

    folder = tmp_path_factory.mktemp("deep-flux") / "model"
    shutil.copytree(materialize("tiny-flux", testbed_cache), folder)
    config = {k: v for k, v in FluxTransformer2DModel.load_config(folder / "transformer").items()
              if not k.startswith("_")}
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(**{**config, "num_layers": 4, "num_single_layers": 12})
    shutil.rmtree(folder / "transformer")
    transformer.save_pretrained(folder / "transformer")
    return folder


FLUX_CACHES = ("first_block_cache", "pab", "faster_cache", "taylor_seer", "mag_cache", "cache_dit")


@pytest.mark.slow
@pytest.mark.parametrize("regional", [True, False], ids=["regional", "whole"])
@pytest.mark.parametrize("cache", FLUX_CACHES)
def test_every_flux_cache_with_compile_is_clean_in_the_timed_calls(cache, regional, deep_flux, make_config,
                                                                   tmp_path):
    """Dynamo's own tracing (backend eager: the guards, breaks and recompiles inductor would meet, without
    generating code) over 16 blocks: no recompile in the timed calls, and the cache still skipped work.
    MagCache with regional compile is refused before load (its blocks run in compiler-disabled hooks)."""
    from diffgentor.errors import RefusedError
    from diffgentor.run import execute

    overrides = ["model=tiny-flux", f"model.path={deep_flux}", "model.testbed=null", f"+cache={cache}",
                 f"+compile={'regional' if regional else 'default'}", "compile.backend=eager", "steps=8"]
    if cache == "cache_dit":  # skip from the third step on (its default warmup is 8 steps; random weights)
        overrides += ["cache.max_warmup_steps=2", "cache.residual_diff_threshold=1.0"]
    if cache == "mag_cache" and regional:
        with pytest.raises(RefusedError, match="regional compile compiles nothing"):
            execute(make_config(overrides), tmp_path, [])
        return
    data = execute(make_config(overrides), tmp_path, [])
    assert data["status"] == "ok"
    assert data["timings"]["compiled_in_timed_calls"] == {"graphs": 0, "frames_compiled": 0}
    assert data["timings"]["warmup_passes"] == 2 and "raised to 2" in data["warnings"][-1]
    records = {r["name"]: r for r in data["optimizations"]}
    assert records["compile"]["evidence"]["dynamo"]["graphs"] > 0
    assert records[cache]["evidence"]["compute_fraction"] < 1


@pytest.mark.slow
def test_a_recompile_in_a_timed_call_fails_the_run_in_one_line(make_config, tmp_path, monkeypatch):
    """Warm up only the first batch: the smaller last batch is a new shape, compiled inside a timed call."""
    import diffgentor.generate as generate_module
    from diffgentor.errors import UnsupportedError
    from diffgentor.run import execute

    monkeypatch.setattr(generate_module, "warmup_batches", lambda batches: batches[:1])
    with pytest.raises(UnsupportedError, match="compile: torch.compile recompiled during a timed call") as failed:
        execute(make_config(["+compile=regional", "compile.mode=default", "steps=2", "batch_size=2",
                             "num_images_per_prompt=3"]), tmp_path, [])
    assert "\n" not in str(failed.value)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
