"""How much does diffgentor add on top of a bare diffusers script?

Side by side in one process, on one loaded testbed pipeline, interleaved rounds:
- bare: `pipe(prompt, num_inference_steps, generator=...)` timed around the call, as a hand-written script would;
- diffgentor: the whole generation loop (kwargs, timing syncs, PNG writing with text chunks, run.json rewrite
  after every image), wall time per image.
Then the wall time of `python -m diffgentor` (import + compose + load + 1 image of the default model) as a subprocess.

Run: python benchmarks/overhead.py [--images 20] [--rounds 5]. Target: ratio <= 1.03, wall < 10 s.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "testbed"
        pipe = DiffusionPipeline.from_pretrained(str(materialize("tiny-flux", cache)), dtype=torch.float32,
                                                 use_safetensors=True)
        pipe.set_progress_bar_config(disable=True)
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
