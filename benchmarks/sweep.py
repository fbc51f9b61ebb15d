"""What does one Hydra multirun save over separate invocations?

Wall time of a 4-job cache sweep on the embedded testbed, run two ways, alternating in each round:
- one multirun: `python -m diffgentor -m +cache=A,B,C,D ...` (one process: Python, torch, diffusers and Hydra are
  imported once; each job still loads its pipeline), summary files included;
- four invocations: `python -m diffgentor +cache=A ...`, then B, C, D (no summary).
Printed: both wall times (median over rounds) and their ratio, four separate / one multirun.

With --reuse (issue 17): a 6-job multirun on a tiny-flux variant whose transformer is large enough that
loading could matter (144 M parameters, ~554 MB of fp32 safetensors, built offline into a temporary folder,
never committed), run with reuse_model=true and reuse_model=false, alternating in each round. Printed: each
sweep's wall time, the jobs' summed load_s, and the ratios reuse / reload. Target: wall ratio <= 0.5.

Run: python benchmarks/sweep.py [--caches none,first_block_cache,pab,taylor_seer] [--steps 4] [--rounds 2]
     python benchmarks/sweep.py --reuse [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def wall_seconds(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "diffgentor", *args, "progress=false"], cwd=cwd,
                            capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: python -m diffgentor {' '.join(args)}\n{result.stderr[-2000:]}")
    return seconds


def large_flux(folder: Path, cache: Path) -> Path:
    """tiny-flux with a 144 M-parameter transformer (16 heads x 64, random weights), as a diffusers folder."""
    import torch
    from diffusers import FluxTransformer2DModel

    from diffgentor.testbed import materialize

    shutil.copytree(materialize("tiny-flux", cache), folder)
    config = {k: v for k, v in FluxTransformer2DModel.load_config(folder / "transformer").items()
              if not k.startswith("_")}
    torch.manual_seed(0)
    model = FluxTransformer2DModel(**{**config, "num_attention_heads": 16, "attention_head_dim": 64,
                                      "axes_dims_rope": (16, 24, 24)})
    shutil.rmtree(folder / "transformer")
    model.save_pretrained(folder / "transformer")
    return folder


def reuse_benchmark(opts: argparse.Namespace) -> None:
    caches = "none,first_block_cache,pab,taylor_seer,faster_cache,mag_cache"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = large_flux(work / "large-flux", work / "testbed")
        size_mb = sum(f.stat().st_size for f in model.rglob("*") if f.is_file()) / 2**20
        common = ["-m", "model=tiny-flux", f"model.path={model}", "model.testbed=null", f"+cache={caches}",
                  f"steps={opts.steps}", "benchmark.warmup=0", "benchmark.min_timed_calls=1",
                  "max_sequence_length=16", f"cache_dir={work / 'testbed'}"]
        walls: dict[bool, list[float]] = {True: [], False: []}
        loads: dict[bool, list[float]] = {True: [], False: []}
        for r in range(opts.rounds):
            for reuse in (True, False):
                sweep = work / f"sweep-{reuse}-{r}"
                walls[reuse].append(wall_seconds([*common, f"reuse_model={str(reuse).lower()}",
                                                  f"hydra.sweep.dir={sweep}"], work))
                records = [json.loads(p.read_text()) for p in sweep.glob("*/run.json")]
                assert len(records) == 6 and all(rec["status"] == "ok" for rec in records), "a job failed"
                loads[reuse].append(sum(rec["timings"]["load_s"] for rec in records))
    print(f"6-job sweep (+cache={caches}) on a {size_mb:.0f} MB tiny-flux variant, {opts.steps} steps, "
          f"median of {opts.rounds} rounds [min, max]:")
    for reuse in (True, False):
        w, l_ = walls[reuse], loads[reuse]
        print(f"  reuse_model={str(reuse).lower():5s}  wall {statistics.median(w):6.2f} s [{min(w):.2f}, {max(w):.2f}]"
              f"  summed load_s {statistics.median(l_):5.2f} s [{min(l_):.2f}, {max(l_):.2f}]")
    print(f"  reuse / reload: wall {statistics.median(walls[True]) / statistics.median(walls[False]):.2f}x, "
          f"load {statistics.median(loads[True]) / statistics.median(loads[False]):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caches", default="none,first_block_cache,pab,taylor_seer")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--reuse", action="store_true", help="reuse_model=true vs false on a ~554 MB variant")
    opts = parser.parse_args()
    if opts.reuse:
        reuse_benchmark(opts)
        return
    caches = opts.caches.split(",")
    common = [f"model={opts.model}", f"steps={opts.steps}"]

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        wall_seconds([*common, "dry_run=true"], work)  # builds the testbed once, outside the timings
        multirun, separate = [], []
        for r in range(opts.rounds):
            multirun.append(wall_seconds(
                ["-m", f"+cache={','.join(caches)}", *common, f"hydra.sweep.dir={work / f'sweep{r}'}"], work))
            separate.append(sum(wall_seconds([f"+cache={cache}", *common, f"hydra.run.dir={work / f'run{r}_{i}'}"],
                                             work) for i, cache in enumerate(caches)))
    one, four = statistics.median(multirun), statistics.median(separate)
    print(f"{len(caches)}-job sweep (+cache={','.join(caches)}, {opts.model}, {opts.steps} steps), "
          f"median of {opts.rounds} rounds:")
    print(f"  one multirun:       {one:7.2f} s  (rounds: {', '.join(f'{s:.2f}' for s in multirun)})")
    print(f"  {len(caches)} invocations:      {four:7.2f} s  (rounds: {', '.join(f'{s:.2f}' for s in separate)})")
    print(f"  ratio separate / multirun: {four / one:.2f}x")


if __name__ == "__main__":
    main()
