"""Where one `python -m diffgentor` spends its time (printed by benchmarks/startup.py).

Runs the default job in this process with timers wrapped around diffgentor's phase functions (this run is
for the breakdown only; startup.py's timed arms run unwrapped). Phases: the libraries' imports (torch,
diffusers, transformers, the pipeline class: any tool pays them), diffgentor's own import, its record path
(environment capture, run.json writes, PNG writes), loading, generation, and the rest of main(): Hydra's
composition (twice: once for the run mode, once for the job) and job setup, planning, teardown.

Run: python benchmarks/startup_phases.py RUN_DIR
"""

import functools
import sys
import time

T0 = time.perf_counter()
import torch  # noqa: E402,F401
import diffusers  # noqa: E402,F401
import transformers  # noqa: E402,F401
from diffusers import FluxPipeline  # noqa: E402,F401

T1 = time.perf_counter()
import diffgentor.__main__ as entry  # noqa: E402

T2 = time.perf_counter()
import diffgentor.record as record  # noqa: E402
import diffgentor.run as run  # noqa: E402

spent: dict = {"record": 0.0, "record_in_generate": 0.0}
active: list = []


def timed(owner, name: str, phase: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        active.append(phase)
        try:
            return original(*args, **kwargs)
        finally:
            active.pop()
            seconds = time.perf_counter() - start
            spent[phase] = spent.get(phase, 0.0) + seconds
            if phase == "record" and "generate" in active:
                spent["record_in_generate"] += seconds

    setattr(owner, name, wrapper)


timed(run, "environment", "record")
timed(run, "save_image", "record")
timed(record.RunRecord, "save", "record")
timed(run, "load_pipeline", "load")
timed(run, "generate", "generate")  # the record writes of each batch inside it are counted as record
timed(run, "prepare", "plan")

sys.argv = ["diffgentor", "benchmark.warmup=0", "progress=false", f"hydra.run.dir={sys.argv[1]}"]
start = time.perf_counter()
entry.main()
main_s = time.perf_counter() - start
generate_s = spent["generate"] - spent["record_in_generate"]
rest = main_s - spent["load"] - generate_s - spent["record"] - spent["plan"]
ours = (T2 - T1) + spent["record"]
print("phases of one `python -m diffgentor` (warmup 0), seconds:")
print(f"  library imports (torch, diffusers, transformers, FluxPipeline)  {T1 - T0:6.3f}")
print(f"  diffgentor's own import                                         {T2 - T1:6.3f}")
print(f"  record path (environment, run.json writes, PNG)                 {spent['record']:6.3f}")
print(f"  plan (resolve model source, build plan)                         {spent['plan']:6.3f}")
print(f"  load (from_pretrained, to device)                               {spent['load']:6.3f}")
print(f"  generate (the pipeline call)                                    {generate_s:6.3f}")
print(f"  rest of main (Hydra compose x2, job setup, teardown)            {rest:6.3f}")
print(f"  diffgentor's own import + record path: {ours:.3f} s (target <= 0.3 s)")
