"""What does each optimizer buy? Latency with it vs without, side by side in one process.

CPU mode (default): on one embedded testbed (tiny-flux, 128 px, batch 2 so VAE slicing/tiling engage), the
unoptimized pipeline and one optimized copy per optimizer run in interleaved rounds (the noise of a shared
machine hits both alike); printed: median latency per call of each, their ratio (< 1 is faster) and the
optimizer's evidence in brief. Compiled variants are warmed (compiled) first; the compile time is shown.
Random tiny weights: these ratios measure overhead and kernels on toy shapes, not what a GPU gains.

GPU mode (--gpu): a full-size FLUX.1-dev-architecture transformer (19 double + 38 single blocks, 24 heads x
128, random bf16 weights) with small text encoders of the right widths (T5 4096, CLIP pooled 768) and the
FLUX VAE architecture, 1024x1024, 28 steps: seconds per image (median [min, max]) for bf16 eager, +fuse_qkv,
+flash / +flash_3 / +sage where installed, +regional compile (max-autotune-no-cudagraphs), +first_block_cache,
and all combined; each row in its own try, peak memory after warmup, a cache's evidence from an untimed
evidence pass. benchmarks/gpu.sh is the prepared run for a lent GPU.

Run: python benchmarks/optimizers.py [--rounds 3] [--steps 4] [--no-compile] [--only fuse,attention] [--all]
     python benchmarks/optimizers.py --gpu [--images 3] [--compile-mode max-autotune-no-cudagraphs]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROMPT = "a small red circle on a blue background"

#: CPU variants: label -> config overrides (all on the same testbed and call settings as the baseline).
CPU_VARIANTS = {
    "fuse_qkv": ["fuse_qkv=true"],
    "attention=native": ["+attention=native"],
    "attention=_native_math": ["+attention=_native_math"],
    "attention=_native_flash": ["+attention=_native_flash"],
    "memory=layerwise_casting": ["+memory=layerwise_casting"],
    "memory=vae_slicing": ["+memory=vae_slicing"],
    "memory=vae_tiling": ["+memory=vae_tiling"],
    "compile=regional (mode default)": ["+compile=regional", "compile.mode=default"],
}
#: Variants run only with --all: FlexAttention without compile materialises the full score matrix (measured
#: ~1.7x the baseline and ~10 s per call on a loaded 2-core machine).
SLOW_CPU_VARIANTS = {"attention=flex (eager)": ["+attention=flex"]}


def run_config(overrides: list[str]):
    """The resolved RunConfig `python -m diffgentor OVERRIDES` would use."""
    from hydra import compose, initialize_config_dir

    from diffgentor.config import register_configs
    from diffgentor.run import resolve_config

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return resolve_config(compose(config_name="config", overrides=overrides))


def brief(evidence: list[dict]) -> str:
    """One line of the evidence that matters most per optimizer."""
    parts = []
    for record in evidence:
        e, name = record["evidence"], record["name"]
        if name == "fuse_qkv":
            parts.append(f"fused={sum(sum(v.values()) for v in e['fused_layers'].values())}")
        elif name == "attention":
            parts.append(f"{e['backend']}: {e['modules_set_to_backend']}/{e['attention_modules']} modules")
        elif name == "compile":
            t = next(iter(e["timing"].values()))
            parts.append(f"graphs={e['dynamo']['graphs']} breaks={e['dynamo']['graph_breaks']} "
                         f"first call {t['first_call_s']:.1f}s")
        elif name == "layerwise_casting":
            (c,) = e["layers_cast"]
            parts.append(f"{e['layers_cast'][c]} layers fp8, bytes x"
                         f"{e['parameter_bytes_after'][c] / e['parameter_bytes_before'][c]:.2f}")
        elif e.get("compute_fraction") is not None:  # a cache (measured in the evidence pass)
            parts.append(f"{name}: compute_fraction {e['compute_fraction']:.3f}")
        elif name in ("vae_slicing", "vae_tiling"):
            parts.append(f"{e['decoder_passes']} passes / {e['decode_calls']} decodes")
    return "; ".join(parts)


def quiet_libraries() -> None:
    """No progress bars or info warnings from diffusers/transformers between the table rows."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.disable_progress_bar()
        library.utils.logging.set_verbosity_error()


# ---- CPU: tiny testbed, interleaved -----------------------------------------------------------------------


def cpu_benchmark(opts: argparse.Namespace) -> None:
    import torch
    from diffusers import DiffusionPipeline

    from diffgentor.optimize import apply_optimizations
    from diffgentor.testbed import TESTBED_CALL_KWARGS, materialize

    cache = Path(opts.cache_dir).expanduser()
    folder = materialize(opts.model, cache)

    def load():
        pipe = DiffusionPipeline.from_pretrained(str(folder), torch_dtype=torch.float32, use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def call_s(pipe) -> float:
        generator = [torch.Generator().manual_seed(i) for i in range(opts.batch)]
        start = time.perf_counter()
        pipe([PROMPT] * opts.batch, num_inference_steps=opts.steps, height=opts.size, width=opts.size,
             generator=generator, output_type="pt", **TESTBED_CALL_KWARGS[opts.model])
        return time.perf_counter() - start

    quiet_libraries()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    candidates = {**CPU_VARIANTS, **(SLOW_CPU_VARIANTS if opts.all else {})}
    variants = {k: v for k, v in candidates.items()
                if (not opts.no_compile or "compile" not in k)
                and (not opts.only or any(word in k for word in opts.only.split(",")))}
    baseline = load()
    call_s(baseline)  # warm the process (allocator, oneDNN) outside every timing
    print(f"{opts.model}, {opts.size}x{opts.size} px, batch {opts.batch}, {opts.steps} steps, "
          f"{opts.rounds} interleaved rounds, torch threads {torch.get_num_threads()}\n")
    header = f"{'optimizer':34s} {'ratio':>6s} {'opt s':>7s} {'base s':>7s} {'warmup s':>8s}  evidence"
    print(header)
    print("-" * len(header))
    for label, overrides in variants.items():
        pipe = load()
        applied = apply_optimizations(pipe, run_config([f"model={opts.model}", "device=cpu", *overrides]))
        warmup_s = call_s(pipe)
        applied.before_timed_calls(pipe)
        base, opt = [], []
        for _ in range(opts.rounds):
            base.append(call_s(baseline))
            opt.append(call_s(pipe))
        b, o = statistics.median(base), statistics.median(opt)
        with applied.evidence_pass(pipe):  # the counters, apart from the timed calls
            call_s(pipe)
        evidence = applied.evidence(pipe)
        try:
            applied.remove(pipe)  # global state (attention registry, inductor flags) back for the next one
        except NotImplementedError:
            pass
        print(f"{label:34s} {o / b:5.2f}x {o:7.3f} {b:7.3f} {warmup_s:8.2f}  {brief(evidence)}", flush=True)
        del pipe
        gc.collect()


# ---- GPU: full-size FLUX.1-dev architecture ---------------------------------------------------------------

FLUX_DEV_TRANSFORMER = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
FLUX_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
}


def flux_dev_pipeline(seed: int = 0, device: str = "cuda", **transformer_overrides):
    """FluxPipeline with the FLUX.1-dev transformer and VAE architectures, random bf16 weights, on CUDA;
    text encoders are small (2 layers) but as wide as the real ones where the transformer reads them."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from diffgentor.testbed.tokenizers import clip_token_ids, clip_tokenizer, t5_tokenizer, t5_vocab

    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly: 12B parameters, 24 GB
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**{**FLUX_DEV_TRANSFORMER, **transformer_overrides})
            vae = AutoencoderKL(**FLUX_VAE)
            clip = CLIPTextModel(CLIPTextConfig(**clip_token_ids(), hidden_size=768, intermediate_size=1536,
                                                num_hidden_layers=2, num_attention_heads=12,
                                                max_position_embeddings=77, projection_dim=768))
            t5 = T5EncoderModel(T5Config(vocab_size=len(t5_vocab()), d_model=4096, d_kv=64, d_ff=1024,
                                         num_layers=2, num_heads=8, is_encoder_decoder=False, pad_token_id=0,
                                         eos_token_id=1, feed_forward_proj="gated-gelu"))
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=clip_tokenizer(77),
                        text_encoder_2=t5, tokenizer_2=t5_tokenizer(512), transformer=transformer)
    for module in (transformer, vae, clip, t5):
        module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gpu_variants(compile_mode: str) -> dict[str, list[str]]:
    """The rows of the GPU table: each optimization alone, then all combined."""
    regional = ["+compile=regional", f"compile.mode={compile_mode}"]
    variants = {"bf16 eager": [], "+fuse_qkv": ["fuse_qkv=true"]}
    attention = [name for name, module in (("flash_3", "flash_attn_interface"), ("flash", "flash_attn"),
                                           ("sage", "sageattention"))
                 if importlib.util.find_spec(module) is not None]
    for name in attention:
        variants[f"+attention={name}"] = [f"+attention={name}"]
    variants[f"+regional compile ({compile_mode})"] = regional
    variants["+first_block_cache (0.2)"] = ["+cache=first_block_cache"]
    best = [f"+attention={attention[0]}"] if attention else []
    variants["all combined"] = ["fuse_qkv=true", *best, "+cache=first_block_cache", *regional]
    return variants


def gpu_benchmark(opts: argparse.Namespace) -> None:
    """One row per variant, each in its own try (a variant that fails is a row with its error): median
    s/image over the timed images [min, max], warmup (compile) apart, peak memory after warmup, evidence
    from an untimed evidence pass where an optimizer needs one."""
    import torch

    from diffgentor.accelerator import end_of_job_cleanup, peak_memory, reset_peak_memory, synchronize
    from diffgentor.optimize import apply_optimizations
    from diffgentor.optimize.plan import needs_evidence_pass
    from diffgentor.run import warmup_passes

    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device")
    quiet_libraries()
    print(f"FLUX.1-dev architecture (random bf16 weights), 1024x1024, {opts.gpu_steps} steps, "
          f"{opts.images} timed images after 1 warmup (2 with compile + cache), {torch.cuda.get_device_name()}, "
          f"torch {torch.__version__}\n")
    header = (f"{'variant':40s} {'s/image [min, max]':>22s} {'vs base':>8s} {'warmup s':>9s} {'peak GB':>8s}"
              "  evidence")
    print(header)
    print("-" * len(header))
    base_s = None
    for label, overrides in gpu_variants(opts.compile_mode).items():
        pipe = applied = None
        try:
            pipe = flux_dev_pipeline()
            applied = apply_optimizations(pipe, run_config(["model=flux-dev", "precision=bf16", "device=cuda",
                                                            *overrides]))

            def image_s() -> float:
                synchronize("cuda")
                start = time.perf_counter()
                pipe(PROMPT, num_inference_steps=opts.gpu_steps, height=1024, width=1024, guidance_scale=3.5,
                     generator=torch.Generator("cpu").manual_seed(0), output_type="pil")
                synchronize("cuda")
                return time.perf_counter() - start

            compiled = any(step.name == "compile" for step in applied.plan.steps)
            # as a run warms up: 2 generations where compile meets a cache (run.warmup_passes)
            warmup_s = sum(image_s() for _ in range(warmup_passes(1, applied.plan)[0]))
            applied.before_timed_calls(pipe)
            reset_peak_memory("cuda")
            # as a run times: a recompile in a timed call fails the row instead of being timed
            with torch.compiler.set_stance("fail_on_recompile") if compiled else contextlib.nullcontext():
                times = [image_s() for _ in range(opts.images)]
            peak_gb = peak_memory("cuda")["peak_bytes"] / 2**30
            if needs_evidence_pass(applied.plan):
                with applied.evidence_pass(pipe):
                    image_s()
            seconds = statistics.median(times)
            base_s = base_s or seconds
            spread = f"{seconds:.2f} [{min(times):.2f}, {max(times):.2f}]"
            print(f"{label:40s} {spread:>22s} {base_s / seconds:7.2f}x {warmup_s:9.1f} {peak_gb:8.1f}  "
                  f"{brief(applied.evidence(pipe))}", flush=True)
        except Exception as exc:  # noqa: BLE001 - a failing variant is a row, the table goes on
            print(f"{label:40s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}",
                  flush=True)
        finally:
            if applied is not None:
                applied.release()
            pipe = applied = None
            end_of_job_cleanup("cuda")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu", action="store_true", help="full-size FLUX.1-dev architecture on CUDA")
    parser.add_argument("--model", default="tiny-flux", help="CPU mode: testbed name")
    parser.add_argument("--steps", type=int, default=4, help="CPU mode: denoising steps")
    parser.add_argument("--size", type=int, default=128, help="CPU mode: image edge in px")
    parser.add_argument("--batch", type=int, default=2, help="CPU mode: images per call")
    parser.add_argument("--rounds", type=int, default=3, help="CPU mode: interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU mode: torch intra-op threads (default 1: on a shared 2-core machine two OpenMP "
                             "threads oversubscribe; measured 0.4 s vs 2.3-9.6 s per call; 0: torch's default)")
    parser.add_argument("--all", action="store_true", help="CPU mode: also the slow variants (flex eager)")
    parser.add_argument("--no-compile", action="store_true", help="CPU mode: skip the compiled variant")
    parser.add_argument("--only", default="", help="CPU mode: comma-separated words; keep matching variants")
    parser.add_argument("--cache-dir", default="~/.cache/diffgentor", help="where testbeds are built")
    parser.add_argument("--images", type=int, default=3, help="GPU mode: timed images per variant")
    parser.add_argument("--gpu-steps", type=int, default=28, help="GPU mode: denoising steps")
    parser.add_argument("--compile-mode", default="max-autotune-no-cudagraphs", help="GPU mode: compile mode")
    opts = parser.parse_args()
    (gpu_benchmark if opts.gpu else cpu_benchmark)(opts)


if __name__ == "__main__":
    main()
