"""torch.compile on the testbeds: same output as eager (fp32, 1e-4) and measured evidence.

Each cold compile costs 20-40 s on a 2-core CPU, so there are two: the whole tiny-Flux transformer (mode
default, with fused QKV and the attention and fused-layer call counters running inside the compiled graph,
which must not recompile) and regional compile of the tiny-SD UNet's repeated blocks (the seed's
`transformer` component mapped to `unet`).
"""

from __future__ import annotations

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
    records = {r["name"]: r for r in applied.evidence(pipe)}

    proof = records["compile"]["evidence"]
    assert proof["components"] == {"transformer": "transformer"}
    # one graph for three calls: the call counters inside it cause no recompiles, and Flux has no graph break
    assert proof["dynamo"]["graphs"] == proof["dynamo"]["frames_compiled"] == 1
    assert proof["dynamo"]["graph_breaks"] == 0
    timing = proof["timing"]["transformer"]
    assert timing["calls"] == 3 and timing["first_call_s"] > timing["steady_call_s"] > 0
    assert proof["inductor"] == {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                                 "epilogue_fusion": False, "coordinate_descent_check_all_directions": True}
    # the dispatcher counter is a side effect inside the compiled graph: still counted on every call
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
    records = {r["name"]: r for r in applied.evidence(pipe)}
    proof = records["compile"]["evidence"]
    assert proof["components"] == {"transformer": "transformer"} and proof["regional"]
    assert proof["compiled_modules"]["transformer"] == len(pipe.transformer.transformer_blocks) == 4
    assert proof["dynamo"]["graphs"] > 0 and proof["timing"]["transformer"]["calls"] == 3
    assert records["attention"]["evidence"]["dispatcher_calls"] == 3 * 4  # 3 steps x 4 blocks, inside the graphs
    assert "no 4-D (conv) weights" in records["channels_last"]["warnings"][0]  # a DiT: nothing to convert
    assert records["tf32"]["applied"]
    applied.remove(pipe)
