"""Cache acceleration (issue #4): every cache on every testbed family it serves, with proof of skipped compute.

Per cache x family: the run completes, the measured compute_fraction is below 1 with settings that skip on
the random-weight testbed, the image stays close to the uncached one, a rerun is bit-identical, and removal
gives back the uncached image bit for bit. Then: loud "skipped nothing", refusals before load, the config
group (env defaults, overrides), run.json through the real run loop, and cache + torch.compile.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from diffgentor.errors import MissingPackageError, UnsupportedError
from diffgentor.optimize.cache.cache_dit import CacheDit, CacheDitSettings
from diffgentor.optimize.cache.counting import FULL_SHARE
from diffgentor.optimize.cache.deep_cache import DeepCache, DeepCacheSettings
from diffgentor.optimize.cache.faster_cache import FasterCache, FasterCacheSettings
from diffgentor.optimize.cache.first_block_cache import FirstBlockCache, FirstBlockCacheSettings
from diffgentor.optimize.cache.mag_cache import MagCache, MagCacheSettings
from diffgentor.optimize.cache.pab import PabSettings, PyramidAttentionBroadcast
from diffgentor.optimize.cache.taylor_seer import TaylorSeer, TaylorSeerSettings
from diffgentor.optimize.compat import families_supporting
from diffgentor.optimize.plan import build_plan
from diffgentor.run import execute, resolve_config
from diffgentor.testbed import TESTBED_CALL_KWARGS, TESTBED_DEFAULTS

STEPS = 6
FAMILY = {"tiny-flux": "flux", "tiny-sd3": "sd3", "tiny-pixart": "pixart", "tiny-sd": "sd", "tiny-sdxl": "sdxl",
          "tiny-qwenimage": "qwenimage"}
#: Cached images must stay this close to the uncached one (random weights: a loose, wiring-level bound).
MIN_PSNR_DB = 25.0

#: Settings that provably skip on the random-weight testbeds (defaults where they already do).
CASES = [
    ("first_block_cache", FirstBlockCache, FirstBlockCacheSettings(threshold=0.5), ["tiny-flux", "tiny-sd3",
                                                                                   "tiny-pixart", "tiny-qwenimage"]),
    # The testbeds' shifted flow-matching schedules spend few of 6 steps inside PAB's default (100, 800) window.
    ("pab", PyramidAttentionBroadcast, PabSettings(timestep_skip_range=[-1, 1001]), ["tiny-flux", "tiny-sd3",
                                                                                     "tiny-pixart"]),
    ("faster_cache", FasterCache, FasterCacheSettings(), ["tiny-flux", "tiny-sd3", "tiny-pixart"]),
    ("taylor_seer", TaylorSeer, TaylorSeerSettings(), ["tiny-flux", "tiny-sd3", "tiny-pixart", "tiny-qwenimage"]),
    ("taylor_seer_lite", TaylorSeer, TaylorSeerSettings(use_lite_mode=True), ["tiny-flux"]),
    ("mag_cache", MagCache, MagCacheSettings(), ["tiny-flux"]),
    ("mag_cache_given_ratios", MagCache, MagCacheSettings(mag_ratios=[1.0] * STEPS), ["tiny-pixart",
                                                                                      "tiny-qwenimage"]),
    ("cache_dit", CacheDit, CacheDitSettings(Fn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2),
     ["tiny-flux", "tiny-sd3", "tiny-pixart"]),
    # Without a negative prompt QwenImage calls its denoiser once per step; cache-dit's default for it pairs
    # calls as cond/uncond (see test_cache_dit_pairs_qwenimage_calls_only_under_true_cfg).
    ("cache_dit_one_call_per_step", CacheDit, CacheDitSettings(Fn_compute_blocks=1, residual_diff_threshold=0.5,
                                                               max_warmup_steps=2, enable_separate_cfg=False),
     ["tiny-qwenimage"]),
    ("deep_cache", DeepCache, DeepCacheSettings(), ["tiny-sd", "tiny-sdxl"]),
]


def generate(pipe, testbed: str, steps: int = STEPS, **overrides) -> torch.Tensor:
    kwargs = {"num_inference_steps": steps, "guidance_scale": TESTBED_DEFAULTS[testbed]["guidance_scale"],
              "height": 64, "width": 64, "output_type": "pt", **TESTBED_CALL_KWARGS[testbed], **overrides}
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red circle on a blue square", generator=torch.Generator("cpu").manual_seed(0), **kwargs).images


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.fixture(scope="module")
def pipelines(load_testbed):
    """One loaded pipeline per testbed, with its uncached image; each test takes its cache off again."""
    cache: dict = {}

    def get(testbed: str):
        if testbed not in cache:
            pipe = load_testbed(testbed)
            for component in pipe.components.values():
                if isinstance(component, torch.nn.Module):
                    component.eval().requires_grad_(False)
            cache[testbed] = (pipe, generate(pipe, testbed))
        return cache[testbed]

    return get


def structure(pipe) -> list:
    """What every module of the denoiser runs (its effective forward function) and its children, in order."""
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    return [(name, getattr(m.forward, "__func__", m.forward), list(m._modules)) for name, m in
            denoiser.named_modules()]


def applied(optimizer, pipe, family: str):
    """Applied and instrumented at once: these tests read the evidence of the generations they run (a run
    measures an evidence pass after its timed calls instead)."""
    optimizer.check(family)
    optimizer.apply(pipe)
    optimizer.instrument(pipe)
    return optimizer


@pytest.mark.parametrize("case,cls,settings,testbed", [
    pytest.param(case, cls, settings, testbed, id=f"{case}-{testbed}")
    for case, cls, settings, testbeds in CASES for testbed in testbeds
])
def test_cache_skips_compute_stays_close_and_removes_cleanly(case, cls, settings, testbed, pipelines):
    pipe, uncached = pipelines(testbed)
    assert FAMILY[testbed] in families_supporting(cls.name)
    before = structure(pipe)
    optimizer = applied(cls(settings), pipe, FAMILY[testbed])
    try:
        cached = generate(pipe, testbed)
        again = generate(pipe, testbed)
        evidence = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    removed = generate(pipe, testbed)

    calls = evidence["block_calls"]
    assert evidence["generations"] == 2 and evidence["steps_run"] == 2 * STEPS
    assert calls["total"] == evidence["denoiser_calls"] * evidence["blocks_per_call"]
    assert calls["total"] == calls["computed"] + calls["partial"] + calls["skipped"]
    assert calls["partial"] + calls["skipped"] > 0
    assert 0.0 < evidence["compute_fraction"] < 1.0 and evidence["skipped_nothing"] is False
    assert evidence["warnings"] == []
    if case.startswith("cache_dit"):  # cache-dit's own account agrees with the measured skips
        assert evidence["cache_dit_cached_steps"] == evidence["measured_cached_calls"] != []
    assert psnr_db(cached, uncached) > MIN_PSNR_DB
    assert torch.equal(again, cached), "a second generation must not see the first one's cache state"
    assert torch.equal(removed, uncached), "after remove() the pipeline must render as if never cached"
    assert structure(pipe) == before, "remove() must leave no patched forward or reordered module behind"


@pytest.mark.parametrize("cls,settings", [
    (FirstBlockCache, FirstBlockCacheSettings(threshold=0.5)),
    (TaylorSeer, TaylorSeerSettings()),
    (MagCache, MagCacheSettings(mag_ratios=[1.0] * STEPS)),
], ids=["first_block_cache", "taylor_seer", "mag_cache"])
def test_qwenimage_true_cfg_caches_cond_and_uncond_apart(cls, settings, pipelines):
    """With a negative prompt QwenImage calls its denoiser twice per step, in diffusers' "cond" and "uncond"
    cache contexts: each keeps its own state, steps count once, and removal gives the uncached image back."""
    pipe, _ = pipelines("tiny-qwenimage")
    uncached = generate(pipe, "tiny-qwenimage", negative_prompt=" ")
    optimizer = applied(cls(settings), pipe, "qwenimage")
    try:
        cached = generate(pipe, "tiny-qwenimage", negative_prompt=" ")
        again = generate(pipe, "tiny-qwenimage", negative_prompt=" ")
        evidence = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    assert evidence["denoiser_calls"] == 2 * 2 * STEPS and evidence["steps_run"] == 2 * STEPS
    assert 0.0 < evidence["compute_fraction"] < 1.0 and evidence["warnings"] == []
    assert psnr_db(cached, uncached) > MIN_PSNR_DB and torch.equal(again, cached)
    assert torch.equal(generate(pipe, "tiny-qwenimage", negative_prompt=" "), uncached)


def test_qwenimage_true_cfg_uncond_calls_count_as_full_compute(pipelines):
    """QwenImage's CFG is a second denoiser call with the (shorter) negative prompt: fully computed, it must
    not count as partial against the cond call's longer text attention."""
    pipe, _ = pipelines("tiny-qwenimage")
    optimizer = applied(FirstBlockCache(FirstBlockCacheSettings(threshold=0.0)), pipe, "qwenimage")
    try:
        generate(pipe, "tiny-qwenimage", negative_prompt=" ")
        evidence = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    assert evidence["denoiser_calls"] == 2 * STEPS and evidence["steps_run"] == STEPS
    assert evidence["compute_fraction"] == 1.0 and evidence["skipped_nothing"] is True
    assert evidence["block_calls"]["partial"] == 0


def test_cache_dit_pairs_qwenimage_calls_only_under_true_cfg(pipelines):
    """cache-dit's default for QwenImagePipeline reads calls as cond/uncond pairs: right with a negative
    prompt (its steps map onto call pairs), wrong without one, and then the evidence says so."""
    pipe, _ = pipelines("tiny-qwenimage")
    settings = CacheDitSettings(Fn_compute_blocks=1, residual_diff_threshold=0.5, max_warmup_steps=2)
    optimizer = applied(CacheDit(settings), pipe, "qwenimage")
    try:
        generate(pipe, "tiny-qwenimage", negative_prompt=" ")
        with_cfg = optimizer.evidence(pipe)
        generate(pipe, "tiny-qwenimage")
        single = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    assert with_cfg["enable_separate_cfg"] is True and with_cfg["warnings"] == []
    assert with_cfg["cache_dit_cached_steps"] and with_cfg["cache_dit_cfg_cached_steps"]
    cond_calls = [2 * step for step in with_cfg["cache_dit_cached_steps"]]
    uncond_calls = [2 * step + 1 for step in with_cfg["cache_dit_cfg_cached_steps"]]
    assert with_cfg["measured_cached_calls"] == sorted(cond_calls + uncond_calls)
    assert 0.0 < with_cfg["compute_fraction"] < 1.0
    (warning,) = single["warnings"]
    assert "one call per step" in warning and "cache.enable_separate_cfg=false" in warning


def test_mag_cache_calibrates_then_caches_with_the_measured_ratios(pipelines):
    pipe, uncached = pipelines("tiny-sd3")
    calibration = applied(MagCache(MagCacheSettings(calibrate=True)), pipe, "sd3")
    try:
        assert torch.equal(generate(pipe, "tiny-sd3"), uncached)  # calibrating skips nothing
        evidence = calibration.evidence(pipe)
    finally:
        calibration.remove(pipe)
    ratios = evidence["calibrated_mag_ratios"]
    assert len(ratios) == STEPS and ratios[0] == 1.0 and evidence["skipped_nothing"] is True
    assert "calibration run" in evidence["warnings"][0]

    # The random testbed's ratios wander ~5% per step: a looser threshold than FLUX's 0.06 lets it skip.
    optimizer = applied(MagCache(MagCacheSettings(mag_ratios=ratios, threshold=0.2)), pipe, "sd3")
    try:
        cached = generate(pipe, "tiny-sd3")
        evidence = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    assert evidence["ratios_source"] == "cache.mag_ratios" and evidence["compute_fraction"] < 1.0
    assert psnr_db(cached, uncached) > MIN_PSNR_DB


def test_mag_cache_follows_the_run_step_count(pipelines):
    """FLUX's shipped ratios are for 28 steps; a 6-step run interpolates them and ends each generation cleanly."""
    pipe, _ = pipelines("tiny-flux")
    optimizer = applied(MagCache(MagCacheSettings()), pipe, "flux")
    try:
        first, second = generate(pipe, "tiny-flux", steps=6), generate(pipe, "tiny-flux", steps=6)
        evidence = optimizer.evidence(pipe)
    finally:
        optimizer.remove(pipe)
    assert evidence["num_inference_steps"] == 6 and torch.equal(first, second)


def test_sd3_gets_the_cache_context_and_timestep_its_pipeline_lacks(pipelines):
    """PAB reads the timestep the SD3 pipeline passes its denoiser; FirstBlockCache needs the context."""
    pipe, _ = pipelines("tiny-sd3")
    assert not isinstance(getattr(type(pipe), "current_timestep", None), property)
    seen = []
    optimizer = applied(PyramidAttentionBroadcast(PabSettings()), pipe, "sd3")
    handle = pipe.transformer.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((float(kwargs["timestep"][0]), optimizer.tracker.current_timestep())),
        with_kwargs=True)
    try:
        generate(pipe, "tiny-sd3", steps=4)
        evidence = optimizer.evidence(pipe)
    finally:
        handle.remove()
        optimizer.remove(pipe)
    # our pre-hook runs after the tracker's, so the tracker already holds this call's timestep
    assert len(seen) == 4 and all(t == current for t, current in seen)
    assert evidence["timestep_source"] == "denoiser timestep argument"
    assert "set_timesteps" not in vars(pipe.scheduler)  # the tracker's wrapper is gone after remove()


def test_faster_cache_without_a_cfg_batch_says_how_to_fix_it(pipelines):
    pipe, _ = pipelines("tiny-sd3")
    optimizer = applied(FasterCache(FasterCacheSettings()), pipe, "sd3")
    try:
        with pytest.raises(UnsupportedError, match="guidance_scale > 1, or cache.guidance_distilled=true"):
            generate(pipe, "tiny-sd3", steps=2, guidance_scale=1.0)
    finally:
        optimizer.remove(pipe)


def test_a_cache_that_skips_nothing_says_so_loudly(make_config, tmp_path, caplog):
    """First Block Cache with a threshold no step of the testbed meets skips nothing: run.json and the
    console must say so, and compute_fraction is exactly 1."""
    cfg = make_config(["+cache=first_block_cache", "cache.threshold=0.01", "steps=6"])
    with caplog.at_level("WARNING"):
        data = execute(cfg, tmp_path, [])
    record = {o["name"]: o for o in data["optimizations"]}["first_block_cache"]
    assert record["params"] == {"threshold": 0.01}
    assert record["evidence"]["skipped_nothing"] is True and record["evidence"]["compute_fraction"] == 1.0
    assert any("SKIPPED NOTHING" in w and "DG_FBC_THRESHOLD" in w for w in record["warnings"])
    assert "SKIPPED NOTHING" in caplog.text


@pytest.mark.parametrize("overrides,name", [
    (["+cache=first_block_cache", "cache.threshold=0.5"], "first_block_cache"),
    (["model=tiny-sdxl", "+cache=deep_cache"], "deep_cache"),
])
def test_run_json_holds_the_measured_evidence(overrides, name, make_config, tmp_path):
    data = execute(make_config([*overrides, "steps=6"]), tmp_path, [])
    assert data["status"] == "ok"
    evidence = {o["name"]: o for o in data["optimizations"]}[name]["evidence"]
    # every generation counts, the untimed warmup call (benchmark.warmup) included
    assert evidence["generations"] >= 1 and evidence["steps_run"] == 6 * evidence["generations"]
    assert evidence["denoiser_calls"] == evidence["steps_run"]
    assert 0.0 < evidence["compute_fraction"] < FULL_SHARE and evidence["skipped_nothing"] is False
    assert set(evidence["block_calls"]) == {"total", "computed", "partial", "skipped"}


# ---- refusals, before load -------------------------------------------------------------------------------

@pytest.mark.parametrize("cache,model,fits", [
    ("deep_cache", "tiny-flux", "first_block_cache"),
    ("deep_cache", "tiny-pixart", "pab"),
    ("first_block_cache", "tiny-sd", "deep_cache"),
    ("pab", "tiny-sdxl", "deep_cache"),
    ("faster_cache", "tiny-sd", "deep_cache"),
    ("taylor_seer", "tiny-sdxl", "deep_cache"),
    ("mag_cache", "tiny-sd", "deep_cache"),
    ("cache_dit", "tiny-sd", "deep_cache"),
])
def test_a_cache_on_the_wrong_architecture_is_refused_naming_those_that_fit(cache, model, fits, make_config):
    run_cfg = resolve_config(make_config([f"model={model}", f"+cache={cache}"]))
    step = {s.name: s for s in build_plan(run_cfg, FAMILY[model]).steps}[cache]
    assert not step.supported
    assert f"does not apply to '{FAMILY[model]}' pipelines" in step.reason
    assert "for this pipeline use:" in step.reason and fits in step.reason.split("for this pipeline use:")[1]


@pytest.mark.parametrize("cache,module,extra", [("deep_cache", "DeepCache", "deepcache"),
                                                ("cache_dit", "cache_dit", "cache-dit")])
def test_a_missing_package_names_the_pip_extra(cache, module, extra, make_config, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    model = "tiny-sd" if cache == "deep_cache" else "tiny-flux"
    run_cfg = resolve_config(make_config([f"model={model}", f"+cache={cache}"]))
    step = {s.name: s for s in build_plan(run_cfg, FAMILY[model]).steps}[cache]
    assert not step.supported and f"pip install 'diffgentor[{extra}]'" in step.reason
    with pytest.raises(MissingPackageError):
        step.optimizer.check(FAMILY[model])


def test_mag_cache_without_ratios_is_refused_before_load(make_config):
    run_cfg = resolve_config(make_config(["model=tiny-sd3", "+cache=mag_cache"]))
    step = {s.name: s for s in build_plan(run_cfg, "sd3").steps}["mag_cache"]
    assert not step.supported and "cache.calibrate=true" in step.reason


# ---- the config group ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["deep_cache", "first_block_cache", "pab", "faster_cache", "taylor_seer",
                                    "cache_dit", "mag_cache"])
def test_every_option_composes_to_its_settings(option, make_config):
    run_cfg = resolve_config(make_config([f"+cache={option}"]))
    assert run_cfg.cache.name == option and type(run_cfg.cache).__name__.endswith("Settings")


def test_seed_environment_variables_are_the_defaults_and_overrides_win(make_config, monkeypatch):
    assert resolve_config(make_config(["+cache=first_block_cache"])).cache.threshold == 0.2
    pab = resolve_config(make_config(["+cache=pab"])).cache
    assert (pab.spatial_skip_range, pab.timestep_skip_range) == (2, [100, 800])
    monkeypatch.setenv("DG_FBC_THRESHOLD", "0.35")
    monkeypatch.setenv("DG_PAB_SPATIAL_SKIP", "3")
    monkeypatch.setenv("DG_PAB_TIMESTEP_SKIP", "(50, 900)")
    monkeypatch.setenv("DG_CACHE_INTERVAL", "5")
    monkeypatch.setenv("DG_CACHE_BRANCH_ID", "1")
    assert resolve_config(make_config(["+cache=first_block_cache"])).cache.threshold == 0.35
    assert resolve_config(make_config(["+cache=first_block_cache", "cache.threshold=0.3"])).cache.threshold == 0.3
    pab = resolve_config(make_config(["+cache=pab"])).cache
    assert (pab.spatial_skip_range, pab.timestep_skip_range) == (3, [50, 900])
    deep = resolve_config(make_config(["model=tiny-sd", "+cache=deep_cache"])).cache
    assert (deep.cache_interval, deep.cache_branch_id) == (5, 1)
    assert resolve_config(make_config(["+cache=taylor_seer"])).cache.cache_interval == 5


# ---- cache + torch.compile: tests/test_compile.py (every FLUX cache with regional and whole compile) ---------

def test_the_timed_calls_carry_no_instrument_and_the_evidence_pass_matches_them(make_config, tmp_path,
                                                                                monkeypatch):
    """A run with a cache: the compute counter and the timestep reads exist only in the evidence pass after
    the timed calls, and (no compile, so deterministic) its images equal the timed ones bit for bit."""
    import diffgentor.optimize.cache.context as context
    import diffgentor.optimize.cache.counting as counting
    from diffgentor.run import execute

    reads, wraps = [], []
    real_read, real_wrap = context._timestep_value, counting.ComputeCounter._wrap
    monkeypatch.setattr(context, "_timestep_value", lambda *a: reads.append(1) or real_read(*a))
    monkeypatch.setattr(counting.ComputeCounter, "_wrap", lambda self, *a: wraps.append(1) or real_wrap(self, *a))
    data = execute(make_config(["+cache=first_block_cache", "steps=8", "benchmark.warmup=1",
                                "benchmark.repeats=2"]), tmp_path, [])
    assert data["evidence_pass"]["images_identical_to_timed"] is True
    evidence = {r["name"]: r for r in data["optimizations"]}["first_block_cache"]["evidence"]
    assert evidence["measured_in"] == "evidence pass" and evidence["generations"] == 1
    assert len(reads) == evidence["denoiser_calls"] == 8  # 4 generations ran; only the evidence pass read
    assert wraps  # the counter was attached, for the evidence pass only
    assert not [m for m in data["optimizations"] if m["name"] == "first_block_cache"][0]["warnings"]
