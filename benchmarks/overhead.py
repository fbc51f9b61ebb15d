"""How much does diffgentor add on top of a bare diffusers script?

Side by side in one process, on one loaded testbed pipeline, interleaved rounds:
- bare: `pipe(prompt, num_inference_steps, generator=...)` timed around the call, as a hand-written script would;
- diffgentor: the whole generation loop (kwargs, timing syncs, PNG writing with text chunks, run.json rewrite
  after every image), wall time per image.
Then the wall time of `python -m diffgentor` (import + compose + load + 1 image of the default model) as a subprocess.

With --cache-arms (issue 11): the timed calls of a cached pipeline, diffgentor vs a bare diffusers script:
- `+cache=first_block_cache` applied by diffgentor (apply_plan, then what its run does before the timed calls),
  its calls timed by diffgentor's own generate();
- the same cache applied by a bare script (`apply_first_block_cache(pipe.transformer,
  FirstBlockCacheConfig(threshold=0.2))`), `pipe(...)` timed around the call;
and both again with regional compile (`+compile=regional compile.mode=default` vs the bare script compiling each
repeated block with `block.compile()`, under the same inductor flags). Each arm has its own pipeline loaded
from the same folder (a compiled arm cannot be applied and removed per round without recompiling); the arms
are warmed up, then timed in interleaved rounds. Target: diffgentor / bare <= 1.01.

Run: python benchmarks/overhead.py [--images 20] [--rounds 5] [--cache-arms]. Targets: loop ratio <= 1.03,
wall < 10 s; cache arms <= 1.01.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from diffgentor.console import no_loading_bars
from diffgentor.generate import GenerationSettings, generate
from diffgentor.prompts import PromptSpec, batches, image_jobs
from diffgentor.record import RunRecord, save_image
from diffgentor.testbed import materialize

PROMPT = "a small red circle on a blue background"


def bare_seconds_per_image(pipe, n: int, steps: int) -> float:
    total = 0.0
    for i in range(n):
        generator = torch.Generator("cpu").manual_seed(i)
        start = time.perf_counter()
        pipe(PROMPT, num_inference_steps=steps, height=64, width=64, generator=generator)
        total += time.perf_counter() - start
    return total / n


def diffgentor_seconds_per_image(pipe, n: int, steps: int, out: Path) -> float:
    jobs = image_jobs([PromptSpec(PROMPT)], n, 0, None)
    settings = GenerationSettings(steps=steps, guidance_scale=3.5, height=64, width=64, device="cpu",
                                  warmup=0, repeats=1)
    record = RunRecord(out, {"config": {}})

    def keep(batch, images, latency_s):
        for job, image in zip(batch, images):
            file = save_image(image, out / "images", job.index, job.prompt, job.seed, "bench")
            record.data["images"].append({"file": file, "seed": job.seed, "latency_s": latency_s})
        record.save()

    start = time.perf_counter()
    generate(pipe, batches(jobs, 1), settings, keep)
    return (time.perf_counter() - start) / n


def load(folder: Path):
    with no_loading_bars():
        pipe = DiffusionPipeline.from_pretrained(str(folder), dtype=torch.float32, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(i: int, steps: int) -> dict:
    return {"prompt": PROMPT, "num_inference_steps": steps, "height": 64, "width": 64, "guidance_scale": 3.5,
            "generator": torch.Generator("cpu").manual_seed(i), "output_type": "pil"}


def bare_cached_pipeline(folder: Path, compiled: bool):
    """What a hand-written script does: diffusers' FirstBlockCache on the transformer, then (compiled) each
    repeated block compiled in place."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache

    pipe = load(folder)
    apply_first_block_cache(pipe.transformer, FirstBlockCacheConfig(threshold=0.2))
    if compiled:
        for block in pipe.transformer.modules():
            if type(block).__name__ in pipe.transformer._repeated_blocks:
                block.compile(mode="default")
    return pipe


def bare_call_seconds(pipe, n: int, steps: int) -> tuple[list[float], list]:
    seconds, images = [], []
    for i in range(n):
        kwargs = call_kwargs(i, steps)
        start = time.perf_counter()
        images += pipe(**kwargs).images
        seconds.append(time.perf_counter() - start)
    return seconds, images


def diffgentor_call_seconds(pipe, n: int, steps: int, compiled: bool) -> tuple[list[float], list]:
    """diffgentor's timed calls: its generate() (syncs on the run's device, its guard on recompiles)."""
    jobs = image_jobs([PromptSpec(PROMPT)], n, 0, None)
    settings = GenerationSettings(steps=steps, guidance_scale=3.5, height=64, width=64, device="cpu",
                                  warmup=0, repeats=1, compiled=compiled)
    images: list = []
    timings = generate(pipe, batches(jobs, 1), settings, lambda batch, out, _: images.extend(out))
    return timings.call_latencies_s, images


def cache_arms(folder: Path, rounds: int, images: int, steps: int) -> None:
    """diffgentor-applied FirstBlockCache vs the bare script's, without and with regional compile."""
    import numpy as np
    from optimizers import run_config

    from diffgentor.optimize import apply_optimizations

    print(f"\n| arm | timed call s/image, median of {rounds} rounds x {images} images [round min, max] | "
          "diffgentor / bare |")
    print("|---|---|---|")
    for compiled in (False, True):
        label = "first_block_cache" + (" + regional compile" if compiled else "")
        overrides = ["+cache=first_block_cache"] + (["+compile=regional", "compile.mode=default"] if compiled
                                                    else [])
        ours_pipe = load(folder)
        with apply_optimizations(ours_pipe, run_config(overrides)) as applied:
            bare_pipe = bare_cached_pipeline(folder, compiled)  # compiled under the inductor flags ours set
            bare_call_seconds(ours_pipe, 2, steps)  # warmup: compiles, as diffgentor's warmup would
            applied.before_timed_calls(ours_pipe)
            bare_call_seconds(bare_pipe, 2, steps)
            bare, ours = [], []
            for _ in range(rounds):
                seconds, bare_images = bare_call_seconds(bare_pipe, images, steps)
                bare.append(statistics.median(seconds))
                seconds, our_images = diffgentor_call_seconds(ours_pipe, images, steps, compiled)
                ours.append(statistics.median(seconds))
        identical = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(bare_images, our_images))
        ratio = statistics.median(ours) / statistics.median(bare)
        overlap = min(ours) <= max(bare) and min(bare) <= max(ours)
        for arm, values in ((f"bare diffusers, {label}", bare), (f"diffgentor, {label}", ours)):
            print(f"| {arm} | {statistics.median(values):.4f} [{min(values):.4f}, {max(values):.4f}] | |")
        print(f"| ratio, {label} | | {ratio:.3f}{' (within noise: the rounds overlap)' if overlap else ''}; "
              f"images identical: {identical} |")
        del ours_pipe, bare_pipe
        torch._dynamo.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--cache-arms", action="store_true",
                        help="only the FirstBlockCache arms (diffgentor vs bare), eager and regional compile")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread per process on a shared 2-core machine (see README, threads)

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "testbed"
        if args.cache_arms:
            cache_arms(materialize("tiny-flux", cache), args.rounds, args.images, args.steps)
            return
        pipe = load(materialize("tiny-flux", cache))
        bare_seconds_per_image(pipe, 3, args.steps)  # warm up allocator and kernels for both arms
        bare, ours = [], []
        for r in range(args.rounds):
            bare.append(bare_seconds_per_image(pipe, args.images, args.steps))
            ours.append(diffgentor_seconds_per_image(pipe, args.images, args.steps, Path(tmp) / f"run{r}"))
        ratio = statistics.median(ours) / statistics.median(bare)
        print(f"| arm | s/image (median of {args.rounds} rounds x {args.images} images, {args.steps} steps) |")
        print("|---|---|")
        print(f"| bare diffusers | {statistics.median(bare):.4f} |")
        print(f"| diffgentor loop | {statistics.median(ours):.4f} |")
        print(f"overhead ratio (diffgentor / bare): {ratio:.3f}  (target <= 1.03)")

        walls = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "diffgentor", f"cache_dir={cache}", "progress=false",
                            f"hydra.run.dir={tmp}/cli"], check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
        print(f"`python -m diffgentor` wall time (import + compose + load + 1 image, testbed cached): "
              f"median {statistics.median(walls):.2f} s of {len(walls)}  (target < 10 s)")


if __name__ == "__main__":
    main()
