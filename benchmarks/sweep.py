"""What does one Hydra multirun save over separate invocations?

Wall time of a 4-job cache sweep on the embedded testbed, run two ways, alternating in each round:
- one multirun: `python -m diffgentor -m +cache=A,B,C,D ...` (one process: Python, torch, diffusers and Hydra are
  imported once; each job still loads its pipeline), summary files included;
- four invocations: `python -m diffgentor +cache=A ...`, then B, C, D (no summary).
Printed: both wall times (median over rounds) and their ratio, four separate / one multirun.

Run: python benchmarks/sweep.py [--caches none,first_block_cache,pab,taylor_seer] [--steps 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--caches", default="none,first_block_cache,pab,taylor_seer")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="tiny-flux")
    opts = parser.parse_args()
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
