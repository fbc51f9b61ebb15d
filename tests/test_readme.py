"""The README's commands run as written, so the README cannot silently go stale.

Every command line in the README's bash blocks is taken as the shell would split it, and run in a fresh
folder, in README order, in one process (tests/readme_driver.py) with this session's testbed cache and no
progress bars added: on the embedded models in full; on hub models, and for sweeps of a whole experiment,
as a dry run (the config composes, the plan is built and printed, nothing is downloaded). Left out, each for
its reason: the pip installs (.ci/run does them), the test command itself, and commands with a placeholder
that only the reader can fill (listed in PLACEHOLDER_COMMANDS), and commands another test runs in full
(COVERED_ELSEWHERE). A shell loop's body runs once; a command the README repeats runs once.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
#: Commands that name something only a reader has; covered where named.
PLACEHOLDER_COMMANDS = {
    "diffgentor report SWEEP_DIR": "tests/test_cli.py rebuilds a real sweep's report",
    "python -m diffgentor -m hydra/launcher=slurm hydra.launcher.partition=gpu hydra.launcher.account=myproj "
    "+experiment=cache_methods": "a SLURM cluster; tests/test_launchers.py runs the same submitit plugin locally",
    "python -m diffgentor -m hydra/launcher=ray_cluster +experiment=cache_methods":
        "diffgentor[ray], which the test environment cannot hold beside joblib (cloudpickle<3 vs >=3)",
    "torchrun --nproc_per_node=8 -m diffgentor model=flux-dev +parallel=ring +attention=flash":
        "8 GPUs with flash-attn; tests/test_context_parallel.py checks ring's refusal where it cannot run",
    "python -m diffgentor +tracking=mlflow tracking.uri=http://mlflow.example.org:5000 tracking.experiment=caches":
        "the reader's MLflow server; tests/test_tracking.py runs against one that refuses connections",
    "mlflow ui --backend-store-uri sqlite:///mlflow.db": "a server that runs until stopped, and its pages need the "
        "full mlflow package, which the test environment does not hold (the extra installs mlflow-skinny)",
}
#: Commands run elsewhere already, in full and with their results checked (the suite's time is kept short).
COVERED_ELSEWHERE = {
    "python -m diffgentor -m hydra/launcher=parallel hydra.launcher.n_jobs=8 +experiment=cache_methods":
        "tests/test_launchers.py (the parallel preset, a sweep of its own)",
    "python -m diffgentor -m hydra/launcher=processes +cache=none,first_block_cache": "tests/test_launchers.py",
    "python -m diffgentor -m +tracking=mlflow +cache=none,first_block_cache":
        "tests/test_tracking.py (a tracked sweep's parent and child runs, read back from the store)",
    "torchrun --standalone --nproc_per_node=2 -m diffgentor model=tiny-flux num_images_per_prompt=4 steps=4":
        "tests/test_distributed.py (2 ranks against a single process, pixel for pixel)",
    "torchrun --standalone --nproc_per_node=2 -m diffgentor model=tiny-flux +parallel=ulysses":
        "tests/test_context_parallel.py (2 ranks against a single process)",
}
#: A placeholder path in a command, and what stands in for it here.
PLACEHOLDER_PATHS = {"/models/my-diffusers-folder": str(REPO / "diffgentor" / "testbed" / "weights" / "shapes-flux")}
HUB_MODELS = ("model=flux-dev", "black-forest-labs/FLUX.1-dev")
#: What a dry run of a GPU command may refuse on this CPU-only machine (and only that): a CUDA-only
#: optimization, or its optional package.
MACHINE_REFUSALS = ("runs on CUDA GPUs only", "pip install 'diffgentor[")


def _refused_only_for_this_machine(result: dict) -> bool:
    """A dry run exits 1 when it refuses anything; on CPU, a GPU command's plan refuses what needs a GPU."""
    refused = [line for line in result["stdout"].splitlines() if "REFUSED" in line]
    return (result["exit_code"] == 1 and _dry(result["command"]) == result["command"] and bool(refused)
            and all(any(reason in line for reason in MACHINE_REFUSALS) for line in refused))


def _without_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (outside quotes, after whitespace)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def readme_commands() -> list[str]:
    """Each command of the README's bash blocks: continuation lines joined, comments and `pip ... &&` cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = _without_comment(line).strip()
            loop = re.fullmatch(r"for .*?; do (.*); done", line)
            if loop:
                line = loop.group(1)  # a shell loop: its body, once
            for part in (p.strip() for p in line.split("&&")):
                if part and not part.startswith(("pip install", "python -m pytest")) and part not in commands:
                    commands.append(part)
    return commands


def _dry(argv: list[str]) -> list[str]:
    if "dry_run=true" in argv or "--dry_run" in argv:
        return argv
    return [*argv, "--dry_run"] if argv[0] == "diffgentor" else [*argv, "dry_run=true"]


def _as_run_here(command: str, testbed_cache: Path) -> list[str]:
    for placeholder, stand_in in PLACEHOLDER_PATHS.items():
        command = command.replace(placeholder, stand_in)
    argv = shlex.split(command)
    if argv[:2] in (["diffgentor", "t2i"], ["python", "-m"]) or argv[0] == "torchrun":
        if any(hub in command for hub in HUB_MODELS) or "+experiment=" in command:
            argv = _dry(argv)
        extra = [f"cache_dir={testbed_cache}", "progress=false"]
        argv = [*argv, *([] if "--" in argv or argv[0] != "diffgentor" else ["--"]), *extra]
    return argv


def test_the_readme_lists_its_commands():
    commands = readme_commands()
    assert set(PLACEHOLDER_COMMANDS) | set(COVERED_ELSEWHERE) <= set(commands)  # no stale exclusion
    assert "python -m diffgentor" in commands  # the main job of the two commands
    assert len(commands) >= 15, commands


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path, testbed_cache):
    diffgentor_argvs, shell = [], []
    for command in readme_commands():
        if command in PLACEHOLDER_COMMANDS or command in COVERED_ELSEWHERE:
            continue
        if command.startswith("python -c"):
            shell.append(command)  # a helper line writing a file the next command reads
            continue
        diffgentor_argvs.append(_as_run_here(command, testbed_cache))
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a red square on a green background", "seed": 5}\n'
                                            '{"prompt": "a small blue star on a white background"}\n')
    for command in shell:
        subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=300)
    (tmp_path / "commands.json").write_text(json.dumps(diffgentor_argvs))
    done = subprocess.run([sys.executable, str(REPO / "tests" / "readme_driver.py"), "commands.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["command"] for r in results] == diffgentor_argvs
    failed = [f"{shlex.join(r['command'])}: exit {r['exit_code']}\n{r['stderr'][-1500:]}"
              for r in results if r["exit_code"] != 0 and not _refused_only_for_this_machine(r)]
    assert not failed, "\n\n".join(failed)
    assert "Traceback" not in "".join(r["stderr"] for r in results)
    assert (tmp_path / "runs" / "dc" / "run.json").is_file()  # the t2i example's --output_dir
