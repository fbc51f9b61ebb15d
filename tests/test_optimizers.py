"""The optimizer applier on the real testbed pipelines: each optimizer keeps the output (within its tolerance),
leaves measured evidence, and every refusal happens before load with a clear reason.

torch.compile lives in test_compile.py (slow: 20-40 s per cold compile on 2 cores).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

from diffgentor.errors import ConfigError, RefusedError, UnsupportedError
from diffgentor.families import ALL_FAMILIES
from diffgentor.optimize import apply_optimizations
from diffgentor.optimize.attention import BACKENDS, AttentionBackend
from diffgentor.optimize.compat import conflicts, families_supporting, family_support
from diffgentor.optimize.offload import GroupOffload, GroupOffloadSettings
from diffgentor.optimize.plan import build_plan
from diffgentor.optimize.registry import STAGE_ORDER, load_all, stage_of
from diffgentor.run import resolve_config
from diffgentor.testbed import TESTBED_CALL_KWARGS

from conftest import run_cli

TESTBEDS = ["tiny-flux", "tiny-sd", "tiny-sdxl", "tiny-sd3", "tiny-pixart", "tiny-qwenimage"]
FAMILY = {name: name.removeprefix("tiny-") for name in TESTBEDS}


def generate(pipe, testbed: str, steps: int = 2, size_px: int = 64, batch: int = 1) -> torch.Tensor:
    pipe.set_progress_bar_config(disable=True)
    return pipe(["a red circle on blue"] * batch, num_inference_steps=steps, height=size_px, width=size_px,
                generator=[torch.Generator().manual_seed(i) for i in range(batch)], output_type="pt",
                **TESTBED_CALL_KWARGS[testbed]).images


@pytest.fixture
def run_config(make_config):
    """The resolved RunConfig `python -m diffgentor OVERRIDES` would use."""
    return lambda overrides: resolve_config(make_config(overrides))


@pytest.fixture
def optimized(load_testbed, run_config):
    """(reference output, optimized output, evidence) for a testbed and config overrides; the optimized
    output is generated in an evidence pass (the optimizers' counters attached, as a run's last pass)."""

    def run(testbed: str, overrides: list[str], **generate_kwargs):
        pipe = load_testbed(testbed)
        reference = generate(pipe, testbed, **generate_kwargs)
        applied = apply_optimizations(pipe, run_config([f"model={testbed}", *overrides]))
        with applied.evidence_pass(pipe):
            output = generate(pipe, testbed, **generate_kwargs)
        evidence = {r["name"]: r for r in applied.evidence(pipe)}
        return reference, output, evidence, (pipe, applied)

    return run


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---- fused QKV -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("testbed", [t for t in TESTBEDS if FAMILY[t] in families_supporting("fuse_qkv")])
def test_fuse_qkv_keeps_output_and_counts_fused_layers(optimized, testbed):
    reference, output, evidence, _ = optimized(testbed, ["fuse_qkv=true"])
    assert max_diff(reference, output) < 1e-5
    record = evidence["fuse_qkv"]
    assert record["applied"]
    fused, calls = record["evidence"]["fused_layers"], record["evidence"]["fused_layer_calls"]
    denoiser = "unet" if FAMILY[testbed] in ("sd", "sdxl") else "transformer"
    assert sum(fused[denoiser].values()) > 0 and calls[denoiser] > 0
    assert sum(fused["vae"].values()) > 0 and calls["vae"] > 0  # every testbed VAE has mid-block attention


def test_fuse_qkv_repairs_sd3_qk_norm(load_testbed, run_config):
    """diffusers' FusedJointAttnProcessor2_0 skips SD3.5's qk-norms; fuse_qkv swaps it for the dispatcher twin."""
    from diffusers import SD3Transformer2DModel

    pipe = load_testbed("tiny-sd3")
    config = {**pipe.transformer.config, "qk_norm": "rms_norm"}
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel.from_config(config).eval()
    for name, param in transformer.named_parameters():
        if "norm" in name and param.dim() == 1:
            param.data.normal_(1.0, 0.5)  # non-trivial norm weights, so dropping them shows
    pipe.transformer = transformer
    reference = generate(pipe, "tiny-sd3")
    applied = apply_optimizations(pipe, run_config(["model=tiny-sd3", "fuse_qkv=true"]))
    with applied.evidence_pass(pipe):
        assert max_diff(reference, generate(pipe, "tiny-sd3")) < 1e-5
    assert applied.evidence(pipe)[-1]["evidence"]["sd3_processors_repaired"] == 4


def test_diffusers_fuses_nothing_on_qwenimage(load_testbed):
    """Why the compat table refuses fuse_qkv on qwenimage: the call succeeds and adds no module (0.42.1)."""
    transformer = load_testbed("tiny-qwenimage").transformer
    before = dict(transformer.named_modules())
    transformer.fuse_qkv_projections()
    try:
        assert dict(transformer.named_modules()).keys() == before.keys()
    finally:
        transformer.unfuse_qkv_projections()


@pytest.mark.parametrize("family", ["sana", "qwenimage"])
def test_fuse_qkv_refused_where_diffusers_fuses_nothing(run_config, family):
    plan = build_plan(run_config(["fuse_qkv=true"]), family)
    (step,) = [s for s in plan.steps if s.name == "fuse_qkv"]
    assert not step.supported and "creates no fused layer" in step.reason


# ---- attention backends ----------------------------------------------------------------------------------


@pytest.mark.parametrize("testbed", TESTBEDS)
def test_native_attention_runs_through_the_dispatcher_on_every_family(optimized, testbed):
    reference, output, evidence, (pipe, applied) = optimized(testbed, ["+attention=native"])
    assert max_diff(reference, output) < 1e-5
    proof = evidence["attention"]["evidence"]
    assert proof["backend"] == "native" and proof["dispatcher_calls"] > 0
    if testbed not in ("tiny-flux", "tiny-qwenimage"):  # these call the dispatcher; the others are rerouted
        assert sum(proof["processors_rerouted"].values()) == proof["attention_modules"] > 0
    applied.remove(pipe)
    processors = (getattr(pipe, "transformer", None) or pipe.unet).attn_processors.values()
    assert not any(type(p).__name__.startswith("Dispatch") for p in processors)
    assert all(getattr(p, "_attention_backend", None) is None for p in processors)


@pytest.mark.parametrize("testbed,backend", [("tiny-sd", "_native_math"), ("tiny-sd", "_native_flash"),
                                             ("tiny-sd3", "flex"), ("tiny-pixart", "flex"),
                                             ("tiny-pixart", "_native_math"), ("tiny-flux", "_native_flash"),
                                             ("tiny-qwenimage", "flex"), ("tiny-qwenimage", "_native_math"),
                                             ("tiny-qwenimage", "_native_flash")])  # one prompt: no mask
def test_cpu_attention_backends_take_effect(optimized, testbed, backend):
    reference, output, evidence, (pipe, applied) = optimized(testbed, [f"+attention={backend}"])
    assert max_diff(reference, output) < 1e-4
    assert evidence["attention"]["evidence"]["dispatcher_calls"] > 0
    applied.remove(pipe)


def test_diffusers_ignores_the_backend_on_sdpa_processors(load_testbed):
    """The trap this module exists for (diffusers 0.42): set_attention_backend on a UNet changes nothing."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    from diffgentor.optimize.attention import _CountingBackend

    pipe = load_testbed("tiny-sd")
    key = AttentionBackendName("_native_math")
    original = _AttentionBackendRegistry._backends[key]
    previous_active = _AttentionBackendRegistry._active_backend
    counter = _AttentionBackendRegistry._backends[key] = _CountingBackend(original)
    try:
        pipe.unet.set_attention_backend("_native_math")
        generate(pipe, "tiny-sd", steps=1)
    finally:
        _AttentionBackendRegistry._backends[key] = original
        _AttentionBackendRegistry.set_active_backend(previous_active)
    assert counter.calls == 0


def test_attention_leaves_no_process_wide_state(load_testbed, run_config):
    """A sweep's next job (another Flux pipeline) must not silently inherit the backend or the counter."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    active = _AttentionBackendRegistry._active_backend
    pipe = load_testbed("tiny-flux")
    applied = apply_optimizations(pipe, run_config(["+attention=_native_math"]))
    assert _AttentionBackendRegistry._active_backend == active
    with applied.evidence_pass(pipe):  # the counter sits in diffusers' registry only for the evidence pass
        generate(load_testbed("tiny-flux"), "tiny-flux", steps=1)  # an unoptimized pipeline in the same process
        generate(pipe, "tiny-flux", steps=1)
    assert applied.evidence(pipe)[-1]["evidence"]["dispatcher_calls"] == 6  # its own 6 modules x 1 step only
    applied.release()
    key = AttentionBackendName("_native_math")
    assert not hasattr(_AttentionBackendRegistry._backends[key], "counter")


def test_attention_with_fused_qkv(optimized):
    reference, output, evidence, _ = optimized("tiny-sdxl", ["fuse_qkv=true", "+attention=_native_math"])
    assert max_diff(reference, output) < 1e-4
    assert evidence["attention"]["evidence"]["processors_rerouted"] == {"FusedAttnProcessor2_0": 34}
    assert evidence["fuse_qkv"]["evidence"]["fused_layer_calls"]["unet"] > 0


@pytest.mark.parametrize("option,needle", [
    ("flash", "pip install 'diffgentor[flash]'"),
    ("sage", "pip install 'diffgentor[sage]'"),
    ("xformers", "pip install 'diffgentor[xformers]'"),
    ("flash_3", "not on PyPI"),
])
def test_missing_attention_package_refused_before_load(run_config, option, needle):
    if importlib.util.find_spec(BACKENDS[option].module):
        pytest.skip(f"{BACKENDS[option].module} is installed here")
    plan = build_plan(run_config([f"+attention={option}"]), "flux")
    (step,) = plan.refused
    assert step.name == "attention" and needle in step.reason


def test_mask_free_attention_refused_on_pixart(run_config):
    plan = build_plan(run_config(["model=tiny-pixart", "+attention=_native_flash"]), "pixart")
    assert "cannot take attention masks" in plan.refused[0].reason


def test_attention_refused_on_sana(run_config):
    plan = build_plan(run_config(["+attention=native"]), "sana")
    assert "dispatcher" in plan.refused[0].reason


def test_unknown_attention_option_is_refused_in_the_plan(run_config):
    plan = build_plan(run_config(["+attention=native", "attention.name=bogus"]), "flux")
    assert not plan.refused[0].supported and "attention=bogus is unknown" in plan.refused[0].reason
    assert "-> REFUSED: attention=bogus is unknown" in plan.describe()
    with pytest.raises(RefusedError, match="attention: attention=bogus is unknown"):
        plan.raise_if_refused()


# ---- memory ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("testbed", TESTBEDS)
def test_layerwise_casting_stores_fp8(optimized, testbed):
    reference, output, evidence, _ = optimized(testbed, ["+memory=layerwise_casting"])
    assert torch.isfinite(output).all() and max_diff(reference, output) < 0.25  # fp8 weights: not exact
    proof = evidence["layerwise_casting"]["evidence"]
    (component,) = proof["layers_cast"]
    assert proof["layers_cast"][component] > 0
    assert proof["parameter_bytes_after"][component] < proof["parameter_bytes_before"][component] / 2
    assert proof["compute_dtype"][component] == "float32"


def test_layerwise_casting_after_fuse_qkv_casts_the_fused_layers(optimized):
    assert stage_of("fuse_qkv") < stage_of("layerwise_casting")
    _, output, evidence, (pipe, _) = optimized("tiny-flux", ["fuse_qkv=true", "+memory=layerwise_casting"])
    assert torch.isfinite(output).all()
    assert pipe.transformer.transformer_blocks[0].attn.to_qkv.weight.dtype == torch.float8_e4m3fn
    assert evidence["fuse_qkv"]["evidence"]["fused_layer_calls"]["transformer"] > 0


def test_vae_slicing_splits_a_batch(optimized):
    reference, output, evidence, _ = optimized("tiny-sd", ["+memory=vae_slicing"], batch=2)
    assert max_diff(reference, output) < 1e-5
    proof = evidence["vae_slicing"]["evidence"]
    assert proof["use_slicing"] and proof["decoder_passes"] == 2 * proof["decode_calls"] > 0
    assert not evidence["vae_slicing"]["warnings"]


def test_vae_slicing_at_batch_one_is_recorded_as_idle(optimized):
    _, _, evidence, _ = optimized("tiny-sd", ["+memory=vae_slicing"], steps=1)
    assert "saved no memory" in evidence["vae_slicing"]["warnings"][0]


def test_vae_slicing_splits_a_qwenimage_batch(optimized):
    """QwenImage's causal 3D VAE has its own enable_slicing; a batch of two decodes in two passes."""
    reference, output, evidence, _ = optimized("tiny-qwenimage", ["+memory=vae_slicing"], batch=2)
    assert max_diff(reference, output) < 1e-5
    proof = evidence["vae_slicing"]["evidence"]
    assert proof["use_slicing"] and proof["decoder_passes"] == 2 * proof["decode_calls"] > 0


def test_vae_tiling_tiles_qwenimage_above_its_256px_tile(optimized):
    """QwenImage's VAE tiles height and width separately from 256 px (no single tile size to set)."""
    reference, output, evidence, _ = optimized("tiny-qwenimage", ["+memory=vae_tiling"], size_px=320)
    assert output.shape == reference.shape and torch.isfinite(output).all()
    proof = evidence["vae_tiling"]["evidence"]
    assert proof["use_tiling"] and proof["decoder_passes"] > proof["decode_calls"] > 0
    assert proof["tile_sample_min_size_px"] == 256


def test_vae_tiling_tile_size_refused_on_qwenimage(load_testbed, run_config):
    with pytest.raises(UnsupportedError, match="no single tile size"):
        apply_optimizations(load_testbed("tiny-qwenimage"),
                            run_config(["model=tiny-qwenimage", "+memory=vae_tiling",
                                        "memory.tile_sample_min_size_px=128"]))


def test_vae_tiling_tiles_large_images(optimized):
    """The testbed VAE's tile is 64 px; a 128 px image decodes in overlapping tiles."""
    reference, output, evidence, _ = optimized("tiny-sd", ["+memory=vae_tiling"], steps=1, size_px=128)
    assert output.shape == reference.shape and torch.isfinite(output).all()
    proof = evidence["vae_tiling"]["evidence"]
    assert proof["use_tiling"] and proof["decoder_passes"] > proof["decode_calls"] > 0


@pytest.mark.parametrize("option", ["model_cpu_offload", "sequential_cpu_offload", "group_offload"])
def test_offload_refused_on_cpu(run_config, option):
    plan = build_plan(run_config([f"+memory={option}", "device=cpu"]), "flux")
    assert "this run is on cpu" in plan.refused[0].reason


@pytest.mark.parametrize("option", ["model_cpu_offload", "sequential_cpu_offload", "group_offload"])
def test_an_accelerator_plan_with_offload_keeps_the_weights_in_cpu_memory(run_config, option):
    """The plan for a CUDA run, built from its Target (as run.prepare does), accepts the offload and tells the
    loader not to move the pipeline to the GPU first; without offload it does."""
    from diffgentor.optimize.base import Target

    target = Target("flux", "cuda", torch.bfloat16)
    plan = build_plan(run_config([f"+memory={option}"]), "flux", target)
    assert not plan.refused and plan.offloads and plan.steps[-1].optimizer.device == "cuda"
    assert not build_plan(run_config(["+memory=vae_tiling"]), "flux", target).offloads


@pytest.mark.parametrize("testbed", ["tiny-flux", "tiny-qwenimage"])
def test_group_offload_hooks_on_cpu_wiring(load_testbed, testbed):
    """The mechanism, applied directly (the plan refuses it on CPU because nothing would move)."""
    pipe = load_testbed(testbed)
    reference = generate(pipe, testbed)
    optimizer = GroupOffload(GroupOffloadSettings())
    optimizer.apply(pipe)
    assert max_diff(reference, generate(pipe, testbed)) < 1e-6
    proof = optimizer.evidence(pipe)
    assert proof["offload_hooks"]["transformer"] > 0 and proof["weights_rest_on"]["transformer"] == "cpu"


# ---- plan, compat table, dry run, CLI --------------------------------------------------------------------


def test_an_incomplete_declaration_is_refused_at_registration():
    from diffgentor.optimize.base import Optimizer
    from diffgentor.optimize.registry import register

    class NoStage(Optimizer):
        name = "no_stage_declared"

    class Silent(Optimizer):
        name, stage, families = "refuses_without_reason", "cache", frozenset({"flux"})

    for cls in (NoStage, Silent):
        with pytest.raises(ValueError, match=cls.name):
            register(cls)
        assert cls.name not in load_all()
    assert all(cls.stage in STAGE_ORDER for cls in load_all().values())


def test_the_compat_table_is_the_declarations():
    support = family_support()
    assert set(support) == set(load_all())
    assert support["deep_cache"].families == {"sd", "sdxl"} and "UNet" in support["deep_cache"].reason
    assert support["fuse_qkv"].families == ALL_FAMILIES - {"sana", "qwenimage"}


def test_declared_conflicts_match_real_tags():
    from diffgentor.optimize.compile import Compile, CompileSettings

    rows = {(c.first, c.second): c.severity for c in conflicts()}
    assert rows[("attention:flash", "attention:xformers")] == "error"
    assert rows[("cache", "compile:cuda_graphs")] == "error"
    assert len(rows) == len(conflicts())  # declared once each
    assert "attention:flash" in AttentionBackend(type("S", (), {"name": "flash"})()).tags()
    assert "compile:cuda_graphs" in Compile(CompileSettings(mode="max-autotune")).tags()
    assert "cache" in load_all()["first_block_cache"]().tags()


@pytest.mark.parametrize("family, overrides, refused, says", [
    ("flux", ["+cache=first_block_cache", "+compile=default", "compile.fullgraph=true"], "first_block_cache",
     "compile.fullgraph=false"),
    ("flux", ["+cache=pab", "+compile=regional", "compile.fullgraph=true"], "pab",
     "tensor values"),
    ("flux", ["+cache=mag_cache", "+compile=regional"], "mag_cache", "regional compile compiles nothing"),
    ("flux", ["+cache=cache_dit", "+compile=default", "compile.fullgraph=true"], "cache_dit",
     "compile.regional=true"),
    ("sd", ["+cache=deep_cache", "+compile=default"], "deep_cache", "recompile on every call"),
    ("flux", ["+cache=taylor_seer", "+compile=default", "compile.mode=max-autotune"], "compile",
     "CUDA graphs overwrite them"),
])
def test_compile_and_cache_pairs_that_fail_are_refused_before_load(run_config, family, overrides, refused, says):
    """Each pair measured to fail after load (or to compile nothing) is refused by the plan, with the fix."""
    plan = build_plan(run_config(overrides), family)
    assert [step.name for step in plan.refused] == [refused]
    assert says in plan.refused[0].reason and "conflict" in plan.refused[0].reason


@pytest.mark.parametrize("overrides, warned", [
    (["+cache=mag_cache", "+compile=default"], "only the code around them is compiled"),
    (["+cache=cache_dit", "+compile=regional", "compile.fullgraph=true"], None),
    (["+cache=first_block_cache", "+compile=regional"], None),
])
def test_compile_and_cache_pairs_that_run(run_config, overrides, warned):
    plan = build_plan(run_config(overrides), "flux")
    assert not plan.refused
    if warned:
        assert any(warned in warning for warning in plan.warnings), plan.warnings
    else:
        assert plan.warnings == []


def test_a_compile_backend_diffgentor_does_not_run_is_refused(run_config):
    plan = build_plan(run_config(["+compile=default", "compile.backend=tensorrt"]), "flux")
    assert "compile.backend='tensorrt'" in plan.refused[0].reason and "aot_eager" in plan.refused[0].reason


def test_compile_component_unet_on_a_dit_refused(run_config):
    plan = build_plan(run_config(["+compile=default", "compile.components=[unet]"]), "flux")
    assert "denoiser is 'transformer'" in plan.refused[0].reason


def test_apply_refuses_a_refused_plan(load_testbed, run_config):
    with pytest.raises(UnsupportedError, match="group_offload"):
        apply_optimizations(load_testbed("tiny-flux"), run_config(["+memory=group_offload", "device=cpu"]))


def test_dry_run_shows_every_refusal_with_its_reason(tmp_path, testbed_cache):
    result = run_cli(["dry_run=true", "+memory=model_cpu_offload", "+attention=flash", "fuse_qkv=true"],
                     tmp_path, testbed_cache=testbed_cache)
    assert result.returncode == 1, result.stderr  # a dry run is a validity check: refused, so it fails
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "attention:" in errors[0] and "model_cpu_offload:" in errors[0], result.stderr
    refused = [line for line in result.stdout.splitlines() if "REFUSED" in line]
    assert len(refused) == 2
    assert any("attention" in line and "diffgentor[flash]" in line for line in refused)
    assert any("model_cpu_offload" in line and "this run is on cpu" in line for line in refused)
    assert "fuse_qkv {'components': ['denoiser', 'vae']} -> supported" in result.stdout


def test_refused_run_exits_with_one_line_before_load(tmp_path, testbed_cache):
    result = run_cli(["+memory=sequential_cpu_offload", "device=cpu"], tmp_path, testbed_cache=testbed_cache)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sequential_cpu_offload:"), result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("outputs/*/*/images/*.png"))


# ---- DG_COMPILE_* environment variables ------------------------------------------------------------------


def test_compile_env_vars_set_the_defaults(run_config, monkeypatch):
    assert run_config(["+compile=enabled"]).compile.mode == "max-autotune-no-cudagraphs"
    monkeypatch.setenv("DG_COMPILE_MODE", "default")
    monkeypatch.setenv("DG_COMPILE_FULLGRAPH", "1")
    monkeypatch.setenv("DG_COMPILE_COMPONENTS", "transformer,vae")
    cfg = run_config(["+compile=enabled"]).compile
    assert (cfg.mode, cfg.fullgraph, cfg.components) == ("default", True, ["transformer", "vae"])
    # a mode option names the mode; the other two still come from the environment
    cfg = run_config(["+compile=max-autotune"]).compile
    assert (cfg.mode, cfg.fullgraph, cfg.components) == ("max-autotune", True, ["transformer", "vae"])


@pytest.mark.parametrize("variable,value", [("DG_COMPILE_MODE", "fastest"), ("DG_COMPILE_FULLGRAPH", "maybe"),
                                            ("DG_COMPILE_COMPONENTS", " ")])
def test_malformed_compile_env_var_names_the_variable(run_config, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        run_config(["+compile=enabled"])


def test_missing_compile_component_is_an_error_not_a_skip(load_testbed, run_config):
    pipe = load_testbed("tiny-flux")
    with pytest.raises(UnsupportedError, match="'text_encoder_3' is not a module component of FluxPipeline"):
        apply_optimizations(pipe, run_config(["+compile=default", "compile.components=[text_encoder_3]"]))


# ---- compile x cache: what CUDA graphs cannot hold is refused before load (issue 11) ---------------------

@pytest.mark.parametrize("overrides, refused", [
    (["+compile=reduce-overhead", "+cache=first_block_cache"], True),
    (["+compile=max-autotune", "+cache=taylor_seer"], True),
    (["+compile=max-autotune-no-cudagraphs", "+cache=first_block_cache"], False),
    (["+compile=default", "+cache=pab"], False),
    (["+compile=regional", "compile.mode=reduce-overhead"], True),
    (["+compile=regional", "compile.mode=default"], False),
])
def test_cuda_graph_modes_are_refused_with_caches_and_regional_compile(overrides, refused, run_config):
    plan = build_plan(run_config(overrides), "flux")
    steps = {step.name: step for step in plan.steps}
    assert steps["compile"].supported is not refused, steps["compile"].reason
    if refused:
        assert "use compile.mode=max-autotune-no-cudagraphs" in steps["compile"].reason
    assert all(step.supported for name, step in steps.items() if name != "compile")


def _fake_package(root, module: str, version: str | None, body: str = "") -> None:
    (root / module).mkdir(parents=True)
    (root / module / "__init__.py").write_text(body)
    if version is not None:
        info = root / f"{module}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")


@pytest.mark.parametrize("option, packages, needle", [
    ("flash", [("flash_attn", "2.0.0", "")], "flash-attn>=2.6.3"),  # too old
    ("flash", [("flash_attn", "2.7.0", "raise ImportError('built for another torch')")], "not usable"),
    ("flash_3", [("flash_attn_interface", None, "")], "Flash Attention 3 backend '_flash_3' is not usable"),
    ("sage", [("sageattention", "1.0.0", "")], "sageattention>=2.1.1"),
])
def test_attention_packages_are_checked_as_diffusers_checks_them(option, packages, needle, tmp_path,
                                                                 testbed_cache):
    """A kernel package that diffusers would refuse after the load (too old, broken, FA3 present only as
    flash_attn_interface) is refused in the plan, loading nothing. Fake packages on PYTHONPATH."""
    for module, version, body in packages:
        _fake_package(tmp_path / "fake", module, version, body)
    result = run_cli(["dry_run=true", "precision=bf16", f"+attention={option}"], tmp_path,
                     env={"PYTHONPATH": str(tmp_path / "fake")}, testbed_cache=testbed_cache)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "REFUSED" in line]
    assert f"attention={option}: diffusers will not run it here:" in line and needle in line, line
