"""First contact, measured: what one `python -m diffgentor` costs next to a script (or the original project)
doing the same image, where that cost goes, and the seed's ten-invocation benchmarking loop vs one run.

Arms, each a fresh process, alternating round by round, one thread each (OMP_NUM_THREADS, --threads):
- bare: benchmarks/bare_diffusers.py — import torch + diffusers, from_pretrained the same folder, one 28-step
  call with the same seed, save the PNG: the least any tool can do;
- diffgentor: `python -m diffgentor benchmark.warmup=0 benchmark.min_timed_calls=1 progress=false` on the default
  model (one call, as the bare script makes);
- original (only with --original PATH or --original-cmd): the original project on the same folder, run from
  the path given (never vendored). The default command assumes its seed-style CLI as a module of that path;
  --original-cmd replaces it ({python} {folder} {prompt} {out} are filled in).
First, the answers that need no model (`--help`, a typo, `--cfg job`) against `python -c "import hydra"`
(issue 13's target: at most 3x); with --config-only, only that.
Printed: each arm's median wall with its min-max, the ratios, whether the images are pixel-identical, and a
phase breakdown of one diffgentor run in-process (timers around diffgentor's own functions; that run is
not one of the timed arms). With --loop N: N `diffgentor t2i` invocations (the seed's loop) vs one
`diffgentor t2i --repeats N`, wall ratio. With --threads-compare: the default job's timed call at threads=1
vs one thread per core.

Run: python benchmarks/startup.py [--rounds 5] [--config-only] [--loop 10] [--threads-compare] [--original PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "diffgentor" / "testbed" / "weights" / "shapes-flux"
PROMPT = "a small red circle on a blue background"
ORIGINAL_CMD = ("{python} -m diffgentor.cli t2i --backend diffusers --model_name {folder} "
                "--prompt {prompt} --output_dir {out}")


def _env(threads: int, pythonpath: str | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {shlex.join(cmd)}\n{result.stderr[-3000:]}")
    return seconds


def _arms(args: argparse.Namespace, work: Path) -> dict:
    """name -> (command for round r, env, where its PNG lands)."""
    py = sys.executable
    arms = {
        "bare": (lambda r: [py, str(REPO / "benchmarks" / "bare_diffusers.py"), str(FOLDER),
                            str(work / f"bare-{r}" / "image.png")], _env(args.threads), "bare-{r}/image.png"),
        "diffgentor": (lambda r: [py, "-m", "diffgentor", "benchmark.warmup=0", "benchmark.min_timed_calls=1",
                                  "progress=false", f"hydra.run.dir={work / f'ours-{r}'}"], _env(args.threads),
                       "ours-{r}/images/*.png"),
    }
    if args.original or args.original_cmd:
        template = args.original_cmd or ORIGINAL_CMD
        arms["original"] = (
            lambda r: shlex.split(template.format(python=py, folder=FOLDER, prompt=shlex.quote(PROMPT),
                                                  out=work / f"orig-{r}")),
            _env(args.threads, args.original), "orig-{r}/**/*.png")
    return arms


def _image(work: Path, pattern: str) -> np.ndarray | None:
    found = sorted(work.glob(pattern))
    return np.asarray(Image.open(found[0]).convert("RGB")) if found else None


def side_by_side(args: argparse.Namespace, work: Path) -> dict:
    arms = _arms(args, work)
    walls: dict = {name: [] for name in arms}
    for r in range(args.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            command, env, _ = arms[name]
            walls[name].append(_timed(command(r), cwd=work, env=env))
    print(f"whole process, one 28-step image of shapes-flux, {args.rounds} alternating rounds, "
          f"{args.threads} thread(s):")
    for name, values in walls.items():
        print(f"  {name:<11} median {statistics.median(values):6.2f} s  [min {min(values):.2f}, max {max(values):.2f}]")
    ours = walls["diffgentor"]
    for other in [n for n in walls if n != "diffgentor"]:
        theirs = walls[other]
        overlap = min(ours) <= max(theirs) and min(theirs) <= max(ours)
        print(f"  diffgentor / {other}: {statistics.median(ours) / statistics.median(theirs):.3f}x"
              f"{'  (ranges overlap: within noise)' if overlap else ''}")
    reference = _image(work, arms["bare"][2].format(r=0))
    for name in [n for n in arms if n != "bare"]:
        image = _image(work, arms[name][2].format(r=0))
        same = image is not None and reference is not None and np.array_equal(image, reference)
        print(f"  {name} image == bare image: {'identical pixels' if same else 'DIFFERENT (or missing)'}")
    return walls


#: The paths that must answer without importing torch or diffusers (tests/test_startup.py checks that).
CONFIG_PATHS = {"--help": ["--help"], "a typo": ["stepz=2"], "--cfg job": ["+cache=first_block_cache", "--cfg", "job"]}


def config_paths(args: argparse.Namespace, work: Path) -> None:
    """`python -m diffgentor --help`, a typo and `--cfg job` vs `python -c "import hydra"`, alternating."""
    py = sys.executable
    arms = {"import hydra": [py, "-c", "import hydra"],
            **{name: [py, "-m", "diffgentor", *argv] for name, argv in CONFIG_PATHS.items()}}
    walls: dict = {name: [] for name in arms}
    for r in range(args.rounds):
        for name in list(arms) if r % 2 == 0 else list(reversed(arms)):
            start = time.perf_counter()
            subprocess.run(arms[name], cwd=work, env=_env(args.threads), capture_output=True)  # a typo exits 1
            walls[name].append(time.perf_counter() - start)
    hydra = walls["import hydra"]
    print(f"answers that need no model, {args.rounds} alternating rounds (wall of the whole process):")
    for name, values in walls.items():
        ratio = "" if name == "import hydra" else (
            f"  {statistics.median(values) / statistics.median(hydra):.2f}x import hydra "
            f"[{min(values) / max(hydra):.2f}-{max(values) / min(hydra):.2f}]")
        print(f"  {name:<13} median {statistics.median(values):5.2f} s  [min {min(values):.2f}, "
              f"max {max(values):.2f}]{ratio}")


def phase_breakdown(args: argparse.Namespace, work: Path) -> None:
    """One diffgentor run in a child process with timers around its phases (benchmarks/startup_phases.py)."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "startup_phases.py"), str(work / "phases")],
                         cwd=work, env=_env(args.threads), capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"phase breakdown failed:\n{out.stderr[-3000:]}")
    print(out.stdout, end="")


def seed_loop(args: argparse.Namespace, work: Path) -> None:
    """The product document's tip: `for i in {1..N}; do diffgentor t2i ...; done` vs `--repeats N` once."""
    base = [sys.executable, "-m", "diffgentor.cli", "t2i", "--backend", "diffusers", "--model_name", "shapes-flux",
            "--prompt", PROMPT]
    env = _env(args.threads)
    start = time.perf_counter()
    for i in range(args.loop):
        _timed([*base, "--output_dir", str(work / f"loop-{i}"), "--", "progress=false"], work, env)
    loop_s = time.perf_counter() - start
    once_s = _timed([*base, "--repeats", str(args.loop), "--output_dir", str(work / "repeats"), "--",
                     "progress=false"], work, env)
    print(f"the seed's loop: {args.loop} x `diffgentor t2i ...` {loop_s:.1f} s vs one `diffgentor t2i ... "
          f"--repeats {args.loop}` {once_s:.1f} s: {loop_s / once_s:.1f}x the wall time for the same "
          f"{args.loop} timed calls")


def thread_counts(args: argparse.Namespace, work: Path) -> None:
    """The default job's timed call at threads=1 vs one thread per core, alternating, repeats 3 per run."""
    cores = os.cpu_count() or 1
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    medians: dict = {1: [], cores: []}
    for r in range(args.rounds):
        for threads in (1, cores) if r % 2 == 0 else (cores, 1):
            run_dir = work / f"threads-{threads}-{r}"
            _timed([sys.executable, "-m", "diffgentor", f"threads={threads}", "benchmark.repeats=3", "progress=false",
                    f"hydra.run.dir={run_dir}"], work, env)
            medians[threads].append(json.loads((run_dir / "run.json").read_text())["timings"]["latency_s"]["median"])
    print(f"the default job's timed call (median of 3 per run, {args.rounds} alternating runs each):")
    for threads, values in medians.items():
        print(f"  threads={threads}: median {statistics.median(values):.3f} s  [min {min(values):.3f}, "
              f"max {max(values):.3f}]")
    print(f"  threads={cores} / threads=1: {statistics.median(medians[cores]) / statistics.median(medians[1]):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--config-only", action="store_true",
                        help="only time --help, a typo and --cfg job against `import hydra`")
    parser.add_argument("--loop", type=int, default=0, help="also compare N invocations with --repeats N")
    parser.add_argument("--threads-compare", action="store_true",
                        help="also time the default job at threads=1 vs one thread per core")
    parser.add_argument("--original", metavar="PATH", help="the original project's checkout (put on PYTHONPATH)")
    parser.add_argument("--original-cmd", metavar="TEMPLATE", help=f"default: {ORIGINAL_CMD}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dg-startup-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-c", "import torch, diffusers"], env=_env(args.threads), check=True)
        config_paths(args, work)
        if args.config_only:
            return
        side_by_side(args, work)
        phase_breakdown(args, work)
        if args.loop:
            seed_loop(args, work)
        if args.threads_compare:
            thread_counts(args, work)


if __name__ == "__main__":
    main()
