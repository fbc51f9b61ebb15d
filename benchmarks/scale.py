"""How much faster is one run on 2 ranks than on 1? (issue 14)

Arms, each a fresh launch on the same prompts and seeds, alternating in every round, every process on one
thread (OMP_NUM_THREADS=1, threads=1):
- `1 rank`:   python -m diffgentor ...
- `2 ranks`:  torchrun --standalone --nproc_per_node=2 -m diffgentor ...  (data parallel: each rank makes
              every other image)
- with --context-parallel, also `2 ranks, ulysses`: the same with +parallel=ulysses (every rank takes part in
  every image).
Printed per arm: run.json's images/s (timed calls only: for data parallel all ranks' timed images over the
slowest rank's timed seconds), the launch's
wall time, and their ratios to `1 rank` (median over rounds, with [min, max]). Target (data parallel, this
2-core machine): images/s ratio >= 1.7.

Run: python benchmarks/scale.py [--model tiny-flux] [--images 32] [--steps 8] [--rounds 3] [--context-parallel]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ARMS = {"1 rank": ([sys.executable], []), "2 ranks": (TORCHRUN, []),
        "2 ranks, ulysses": (TORCHRUN, ["+parallel=ulysses"])}


def run_arm(launcher: list[str], extra: list[str], common: list[str], folder: Path) -> tuple[float, float]:
    """(images/s from run.json, wall seconds of the launch)."""
    start = time.perf_counter()
    result = subprocess.run([*launcher, "-m", "diffgentor", *common, *extra, f"hydra.run.dir={folder}"],
                            capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(extra) or 'plain'} run\n{result.stderr[-2000:]}")
    record = json.loads((folder / "run.json").read_text())
    rate = (record.get("distributed") or {}).get("images_per_s") or record["timings"]["images_per_s"]
    return rate, wall


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--context-parallel", action="store_true")
    args = parser.parse_args()
    arms = {name: arm for name, arm in ARMS.items() if args.context_parallel or "ulysses" not in name}
    common = [f"model={args.model}", f"steps={args.steps}", f"num_images_per_prompt={args.images}", "threads=1",
              "progress=false", "benchmark.min_timed_calls=1"]
    rates: dict[str, list[float]] = {name: [] for name in arms}
    walls: dict[str, list[float]] = {name: [] for name in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(args.rounds):
            for name, (launcher, extra) in arms.items():
                rate, wall = run_arm(launcher, extra, common, Path(tmp) / f"{round_index}-{len(rates[name])}"
                                     f"-{name.replace(' ', '_').replace(',', '')}")
                rates[name].append(rate)
                walls[name].append(wall)
                print(f"round {round_index + 1}: {name:18s} {rate:.3f} images/s, wall {wall:.1f} s", flush=True)
    print(f"\n{args.model}, {args.images} images x {args.steps} steps, {args.rounds} rounds, one thread per process")
    print(f"{'arm':18s} {'images/s':22s} {'ratio to 1 rank':22s} {'wall s':22s} wall ratio")
    base_rates, base_walls = rates["1 rank"], walls["1 rank"]
    for name in arms:
        rate_ratio = [r / b for r, b in zip(rates[name], base_rates)]
        wall_ratio = [w / b for w, b in zip(walls[name], base_walls)]
        print(f"{name:18s} {spread(rates[name]):22s} {spread(rate_ratio):22s} {spread(walls[name]):22s} "
              f"{spread(wall_ratio)}")


if __name__ == "__main__":
    main()
