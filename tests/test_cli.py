"""`diffgentor t2i ...`: every command line of the seed document, the flag -> override translation, the DG_*
variables through the CLI, and the `report` / `support` subcommands."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from diffgentor import cli
from diffgentor.errors import ConfigError
from diffgentor.envvars import documented_variables
from diffgentor.families import FAMILIES
from diffgentor.run import resolve_config
from diffgentor.t2i import COMPILE_FROM_ENV_OPTION

from conftest import REPO, compose_config

#: Every `diffgentor` command line of the seed's speed-optimizations guide, verbatim (continuations joined).
SEED_COMMANDS = (
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --enable_tf32",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --no-enable_tf32",
    'diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --prompt "A landscape" '
    "--enable_compile",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --attention_backend flash",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --attention_backend sage",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --attention_backend xformers",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --enable_xformers",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --enable_fuse_qkv",
    "diffgentor t2i --backend diffusers --model_name stabilityai/stable-diffusion-xl-base-1.0 "
    "--cache_type deep_cache",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --cache_type first_block_cache",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --cache_type pab",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --cache_type faster_cache",
    "diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --cache_type cache_dit",
    'diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --prompt "A landscape" '
    "--torch_dtype bfloat16 --enable_compile --attention_backend flash --cache_type first_block_cache "
    "--enable_fuse_qkv",
    'diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --prompt "A landscape" '
    "--torch_dtype bfloat16 --attention_backend flash --cache_type first_block_cache",
    'diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev --prompt "A landscape" '
    "--enable_compile --attention_backend flash --cache_type first_block_cache",
)
#: The seed's real models, swapped for the embedded testbed of the same family (no weights offline).
TESTBED_FOR = {"black-forest-labs/FLUX.1-dev": "tiny-flux", "stabilityai/stable-diffusion-xl-base-1.0": "tiny-sdxl"}
SEED_DOC_CANDIDATES = (REPO / "docs" / "speed-optimizations.md",
                       REPO.parent / "shared" / "seed" / "speed-optimizations.md")


def seed_argv(command: str, testbed: bool = True) -> list[str]:
    argv = shlex.split(command)
    assert argv[0] == "diffgentor"
    return [TESTBED_FOR.get(a, a) for a in argv[1:]] if testbed else argv[1:]


def _seed_id(command: str) -> str:
    flags = command.split("--model_name ", 1)[1].split(" ", 1)[1]
    return re.sub(r'"[^"]*"\s*|--backend \S+ |--prompt ', "", flags).replace("--", "").replace(" ", "+")


#: What every seed command here passes through: the session's testbed cache, no bars, and one timed call
#: (these tests check what a command runs and records, not its timing spread).
TEST_PASSTHROUGH = ("progress=false", "benchmark.min_timed_calls=1")


def cli_cmd(args: list[str], testbed_cache: Path, passthrough: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "diffgentor.cli", *args, "--", f"cache_dir={testbed_cache}", *TEST_PASSTHROUGH,
            *passthrough]


def run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DG_")}
    return subprocess.run(cmd, cwd=cwd, env={**full_env, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def single_record(root: Path) -> dict:
    records = list(root.glob("outputs/*/*/run.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def parse(argv: list[str]):
    return cli.build_parser().parse_args(["t2i", *argv])


# --------------------------------------------------------------------------------------------------------
# The seed's command lines, end to end.

def _attention_runs_here(backend: str) -> bool:
    from diffgentor.optimize.attention import BACKENDS

    spec = BACKENDS[backend]
    has_module = spec.module is None or importlib.util.find_spec(spec.module) is not None
    return has_module and (torch.cuda.is_available() or not spec.needs_cuda)


#: The seed's documented defaults (its "Cache Configuration" table), as recorded in run.json params.
SEED_CACHE_DEFAULTS = {
    "deep_cache": {"cache_interval": 3, "cache_branch_id": 0},
    "first_block_cache": {"threshold": 0.2},
    "pab": {"spatial_skip_range": 2, "timestep_skip_range": [100, 800]},
}


def expected_records(argv: list[str]) -> dict[str, dict]:
    """What run.json's `optimizations` must hold for these seed flags: name -> params that must match."""
    args = parse(argv)
    expected = {"tf32": {"enabled": args.enable_tf32 is not False}}
    if args.enable_fuse_qkv:
        expected["fuse_qkv"] = {}
    backend = "xformers" if args.enable_xformers else args.attention_backend
    if backend:
        expected["attention"] = {"backend": backend}
    if args.cache_type:
        expected[args.cache_type] = SEED_CACHE_DEFAULTS.get(args.cache_type, {})
    if args.enable_compile:
        expected["compile"] = {"mode": "max-autotune-no-cudagraphs"}
    return expected


def test_seed_commands_are_the_seed_documents(request):
    """The list above is the seed document's, verbatim (checked where the document is at hand)."""
    doc = next((p for p in SEED_DOC_CANDIDATES if p.is_file()), None)
    if doc is None:
        pytest.skip("the seed document is not in this checkout")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            if line.strip().startswith("diffgentor "):
                found.append(re.sub(r"\s+", " ", line.strip()))
    assert tuple(found) == SEED_COMMANDS


def _compiles(command: str) -> bool:
    return "--enable_compile" in command


@pytest.fixture(scope="session")
def seed_runs(tmp_path_factory, testbed_cache) -> dict[str, tuple[types.SimpleNamespace, Path]]:
    """Every seed command that does not compile, run once as `diffgentor t2i ...`, all in one process
    (tests/readme_driver.py): each pays the imports once, not sixteen times. command -> (result, its folder)."""
    root = tmp_path_factory.mktemp("seed-runs")
    commands = [c for c in SEED_COMMANDS if not _compiles(c)]
    argvs = [["diffgentor", *seed_argv(c), "--", f"cache_dir={testbed_cache}", *TEST_PASSTHROUGH,
              f"hydra.run.dir={root / str(i) / 'outputs' / 'day' / 'time'}"] for i, c in enumerate(commands)]
    (root / "commands.json").write_text(json.dumps(argvs))
    done = run([sys.executable, str(REPO / "tests" / "readme_driver.py"), "commands.json"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(commands), done.stderr[-3000:]
    return {c: (types.SimpleNamespace(returncode=r["exit_code"], stdout=r["stdout"], stderr=r["stderr"]),
                root / str(i)) for i, (c, r) in enumerate(zip(commands, results))}


@pytest.mark.parametrize("command", [
    pytest.param(c, id=_seed_id(c), marks=[pytest.mark.slow] if _compiles(c) else []) for c in SEED_COMMANDS
])
def test_seed_command_runs_with_the_testbed(command, tmp_path, testbed_cache, request):
    argv = seed_argv(command)
    if _compiles(command):  # in a process of its own: compiling leaves dynamo's caches behind
        result = run(cli_cmd(argv, testbed_cache), tmp_path)
    else:
        result, tmp_path = request.getfixturevalue("seed_runs")[command]
    args = cli.build_parser().parse_args(argv)
    backend = "xformers" if args.enable_xformers else args.attention_backend
    if backend and not _attention_runs_here(backend):
        # flash / sage / xformers need their package and a CUDA GPU: refused before load, in one line.
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stderr.startswith("error: ") and f"attention={backend}" in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        refused = single_record(tmp_path)  # the refusal is on record, with nothing generated
        assert refused["status"] == "refused" and refused["reasons"][0].startswith("attention:"), refused
        assert not list(tmp_path.glob("outputs/*/*/images/*.png"))
        return
    assert result.returncode == 0, result.stderr
    data = single_record(tmp_path)
    assert data["status"] == "ok"
    assert data["config"]["model"]["name"] == TESTBED_FOR[seed_argv(command, testbed=False)[4]]
    assert data["overrides"] == cli.translate(args) + [f"cache_dir={testbed_cache}", *TEST_PASSTHROUGH]
    records = {o["name"]: o for o in data["optimizations"]}
    for name, params in expected_records(argv[1:]).items():
        assert name in records, (name, list(records))
        assert records[name]["applied"] is True and records[name]["evidence"], records[name]
        for key, value in params.items():
            assert records[name]["params"][key] == value, (name, records[name]["params"])


def test_seed_command_as_written_dry_runs_offline():
    """The seed's maximum-speed line, FLUX.1-dev and all, through the console script: translated and planned."""
    exe = shutil.which("diffgentor")
    if exe is None:
        pytest.skip("the `diffgentor` console script is not installed (pip install -e .)")
    result = run([exe, *seed_argv(SEED_COMMANDS[13], testbed=False), "--dry_run"], REPO)
    out = result.stdout
    # A dry run fails when anything is refused: on a machine without CUDA and flash-attn, attention=flash is.
    assert result.returncode == (1 if "REFUSED" in out else 0), result.stderr
    if result.returncode:
        assert result.stderr.strip().splitlines()[-1].startswith("error: attention: attention=flash"), result.stderr
    assert ("translated to: python -m diffgentor model=flux-dev precision=bf16 \"prompt='A landscape'\" "
            "fuse_qkv=true +attention=flash +cache=first_block_cache +compile=enabled dry_run=true\n") in out
    assert "plan for a 'flux' pipeline" in out
    for name in ("tf32", "fuse_qkv", "attention", "first_block_cache", "compile"):
        assert re.search(rf"^\s+\d+\. {name} ", out, re.M), (name, out)


# --------------------------------------------------------------------------------------------------------
# Flag -> override translation, flag by flag (no Hydra run).

@pytest.mark.parametrize("argv, overrides", [
    ([], []),
    (["--backend", "diffusers"], []),
    (["--model_name", "tiny-sdxl"], ["model=tiny-sdxl"]),
    (["--model_name", "flux-dev"], ["model=flux-dev"]),
    (["--model_name", "black-forest-labs/FLUX.1-dev"], ["model=flux-dev"]),
    (["--model_name", "black-forest-labs/flux.1-dev/"], ["model=flux-dev"]),
    (["--model_name", "stabilityai/stable-diffusion-xl-base-1.0"], ["model=sdxl-base"]),
    (["--torch_dtype", "bfloat16"], ["precision=bf16"]),
    (["--torch_dtype", "float16"], ["precision=fp16"]),
    (["--torch_dtype", "float32"], ["precision=fp32"]),
    (["--torch_dtype", "bf16"], ["precision=bf16"]),
    (["--torch_dtype", "auto"], ["precision=auto"]),
    (["--enable_tf32"], ["precision.tf32=true"]),
    (["--no-enable_tf32"], ["precision.tf32=false"]),
    (["--prompt", "A landscape"], ["prompt='A landscape'"]),
    (["--negative_prompt", "blurry"], ["negative_prompt='blurry'"]),
    (["--num_inference_steps", "4"], ["steps=4"]),
    (["--steps", "4"], ["steps=4"]),
    (["--guidance_scale", "2.5"], ["guidance_scale=2.5"]),
    (["--height", "32", "--width", "48"], ["height=32", "width=48"]),
    (["--seed", "7"], ["seed=7"]),
    (["--num_images_per_prompt", "2", "--batch_size", "2"], ["num_images_per_prompt=2", "batch_size=2"]),
    (["--device", "cpu"], ["device='cpu'"]),
    (["--warmup", "1", "--repeats", "3"], ["benchmark.warmup=1", "benchmark.repeats=3"]),
    (["--enable_fuse_qkv"], ["fuse_qkv=true"]),
    (["--attention_backend", "flash"], ["+attention=flash"]),
    (["--attention_backend", "sage"], ["+attention=sage"]),
    (["--enable_xformers"], ["+attention=xformers"]),
    (["--enable_xformers", "--attention_backend", "xformers"], ["+attention=xformers"]),
    (["--cache_type", "deep_cache"], ["+cache=deep_cache"]),
    (["--cache_type", "first_block_cache"], ["+cache=first_block_cache"]),
    (["--cache_type", "pab"], ["+cache=pab"]),
    (["--cache_type", "faster_cache"], ["+cache=faster_cache"]),
    (["--cache_type", "taylor_seer"], ["+cache=taylor_seer"]),
    (["--cache_type", "cache_dit"], ["+cache=cache_dit"]),
    (["--enable_compile"], [f"+compile={COMPILE_FROM_ENV_OPTION}"]),
    (["--enable_compile", "--compile_mode", "reduce-overhead"], ["+compile=reduce-overhead"]),
    (["--enable_compile", "--compile_regional"], ["+compile=enabled", "compile.regional=true"]),
    (["--dry_run"], ["dry_run=true"]),
    (["--threads", "1"], ["threads=1"]),
    (["--max_sequence_length", "256"], ["max_sequence_length=256"]),
    (["--true_cfg_scale", "4.0"], ["true_cfg_scale=4.0"]),
])
def test_flag_translates_to_override(argv, overrides):
    assert cli.translate(parse(argv)) == overrides


def test_every_translation_composes_into_the_config_it_names():
    cfg = compose_config(cli.translate(parse([
        "--model_name", "tiny-sd", "--torch_dtype", "float16", "--no-enable_tf32", "--prompt", "x",
        "--steps", "3", "--guidance_scale", "1.5", "--height", "32", "--width", "40", "--seed", "9",
        "--num_images_per_prompt", "3", "--batch_size", "2", "--negative_prompt", "y", "--device", "cpu",
        "--warmup", "0", "--repeats", "2", "--enable_fuse_qkv", "--dry_run", "--threads", "2",
        "--max_sequence_length", "64", "--true_cfg_scale", "3"])))
    assert (cfg.model.name, cfg.precision.dtype.value, cfg.precision.tf32) == ("tiny-sd", "fp16", False)
    assert (cfg.prompt, cfg.negative_prompt, cfg.steps, cfg.guidance_scale) == ("x", "y", 3, 1.5)
    assert (cfg.height, cfg.width, cfg.seed, cfg.num_images_per_prompt, cfg.batch_size) == (32, 40, 9, 3, 2)
    assert (cfg.device, cfg.benchmark.warmup, cfg.benchmark.repeats) == ("cpu", 0, 2)
    assert cfg.fuse_qkv is True and cfg.dry_run is True
    assert (cfg.threads, cfg.max_sequence_length, cfg.true_cfg_scale) == (2, 64, 3.0)


def test_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = cli.translate(parse(["--prompts_file", "p.txt", "--output_dir", "runs/a"]))
    assert overrides == [f"prompts_file='{tmp_path / 'p.txt'}'", f"hydra.run.dir='{tmp_path / 'runs/a'}'"]
    # in a sweep (Hydra's -m after --), the output folder is the sweep folder
    args = parse(["--output_dir", "runs/a"])
    assert cli.translate(args, ["-m"]) == [f"hydra.sweep.dir='{tmp_path / 'runs/a'}'"]


@pytest.mark.parametrize("text", [
    "A landscape, at dusk", "it's", 'say "hi"', "a=b", "back\\slash", "trailing\\", "quote\\'d",
    "${oc.env:HOME}", "\\${literal}", "[1, 2]", "{a: b}", "null", "true", "100%", " padded ", "日本の風景",
])
def test_free_text_reaches_the_config_verbatim(text):
    cfg = compose_config(cli.translate(parse(["--prompt", text, "--negative_prompt", text])))
    assert resolve_config(cfg).prompt == text
    assert resolve_config(cfg).negative_prompt == text


def test_passthrough_overrides_follow_and_hydra_flags_lead():
    assert cli.hydra_argv(["model=tiny-sd"], ["steps=3", "-m", "seed=0,1"]) == \
        ["-m", "model=tiny-sd", "steps=3", "seed=0,1"]
    assert cli.hydra_argv(["a=1"], ["--cfg", "job", "b=2"]) == ["--cfg", "job", "a=1", "b=2"]
    assert cli.split_passthrough(["t2i", "--steps", "2", "--", "x=1", "--", "y"]) == \
        (["t2i", "--steps", "2"], ["x=1", "--", "y"])


# --------------------------------------------------------------------------------------------------------
# --model_name: entries, hub ids, folders.

def test_local_folder_takes_its_family_and_the_defaults_of_that_family(testbed_cache):
    from diffgentor.testbed import materialize

    folder = materialize("tiny-sdxl", testbed_cache)
    overrides = cli.translate(parse(["--model_name", str(folder)]))
    assert overrides == ["model=sdxl-base", f"model.name='{folder.name}'", f"model.path='{folder}'",
                         "model.testbed=null", "model.family=sdxl"]
    run_cfg = resolve_config(compose_config(overrides))
    assert (run_cfg.model.path, run_cfg.model.family, run_cfg.model.testbed) == (str(folder), "sdxl", None)


def test_local_folder_dry_runs(tmp_path, testbed_cache):
    from diffgentor.testbed import materialize

    folder = materialize("tiny-flux", testbed_cache)
    result = run(cli_cmd(["t2i", "--model_name", str(folder), "--enable_fuse_qkv", "--dry_run"], testbed_cache),
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"model: {folder} (flux, {folder})" in result.stdout
    assert re.search(r"^\s+\d+\. fuse_qkv .*-> supported$", result.stdout, re.M), result.stdout


def test_unknown_hub_id_offline_needs_a_family(testbed_cache):
    from diffgentor.errors import ModelLoadError
    from diffgentor.run import prepare

    overrides = cli.translate(parse(["--model_name", "someone/some-model"]))
    assert "model.path='someone/some-model'" in overrides and "model.family=null" in overrides
    with pytest.raises(ModelLoadError, match="model.family"):
        prepare(resolve_config(compose_config([*overrides, f"cache_dir={testbed_cache}"])))
    assert cli.translate(parse(["--model_name", "someone/some-model", "--model_family", "sdxl"]))[0] == \
        "model=sdxl-base"
    assert cli.translate(parse(["--model_name", "someone/x"]), ["model.family=sd3"])[0] == "model=sd3-medium"


# --------------------------------------------------------------------------------------------------------
# Errors: one line, exit 1, before anything loads.

def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (["t2i", "--backend", "xdit"], "--backend xdit is not supported; supported backends: diffusers"),
    (["t2i", "--backend", "vllm"], "supported backends: diffusers"),
    (["t2i", "--enable_xformers", "--attention_backend", "flash"], "--enable_xformers and --attention_backend flash"),
    (["t2i", "--cache_type", "no_such_cache"], "invalid choice: 'no_such_cache'"),
    (["t2i", "--attention_backend", "fastest"], "invalid choice: 'fastest'"),
    (["t2i", "--torch_dtype", "float8"], "invalid choice: 'float8'"),
    (["t2i", "--steps", "many"], "invalid int value: 'many'"),
    (["t2i", "--compile_mode", "max-autotune"], "--compile_mode needs --enable_compile"),
    (["t2i", "--model_family", "sdxl"], "--model_family needs --model_name"),
    (["t2i", "--model_name", "flux-dev", "--model_family", "sdxl"], "contradicts"),
    (["t2i", "steps=3"], "Hydra overrides go after `--`"),
    (["support", "--", "x=1"], "takes no Hydra overrides"),
    (["t2i", "--", "--frobnicate"], "after `--`: unrecognized arguments: --frobnicate"),
    ([], "choose a command"),
])
def test_user_errors_are_one_line_and_exit_1(argv, message, capsys):
    code, _, err = run_main(argv, capsys)
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err


def test_xformers_and_flash_conflict_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be combined"):
        cli.translate(parse(["--attention_backend", "flash", "--enable_xformers"]))


# --------------------------------------------------------------------------------------------------------
# DG_* variables: defaults in the config the CLI composes; malformed values end to end.

ENV_CASES = [  # flags, variable, its value, the setting it feeds, the parsed value, the documented default
    (["--cache_type", "first_block_cache"], "DG_FBC_THRESHOLD", "0.35", "cache.threshold", 0.35, 0.2),
    (["--model_name", "tiny-sdxl", "--cache_type", "deep_cache"], "DG_CACHE_INTERVAL", "5",
     "cache.cache_interval", 5, 3),
    (["--model_name", "tiny-sdxl", "--cache_type", "deep_cache"], "DG_CACHE_BRANCH_ID", "1",
     "cache.cache_branch_id", 1, 0),
    (["--cache_type", "taylor_seer"], "DG_CACHE_INTERVAL", "4", "cache.cache_interval", 4, 3),
    (["--cache_type", "pab"], "DG_PAB_SPATIAL_SKIP", "3", "cache.spatial_skip_range", 3, 2),
    (["--cache_type", "pab"], "DG_PAB_TIMESTEP_SKIP", "(200, 700)", "cache.timestep_skip_range", [200, 700],
     [100, 800]),
    (["--enable_compile"], "DG_COMPILE_MODE", "reduce-overhead", "compile.mode", "reduce-overhead",
     "max-autotune-no-cudagraphs"),
    (["--enable_compile"], "DG_COMPILE_FULLGRAPH", "true", "compile.fullgraph", True, False),
    (["--enable_compile"], "DG_COMPILE_COMPONENTS", "transformer,vae", "compile.components",
     ["transformer", "vae"], ["transformer"]),
]


def _setting(run_cfg, dotted: str):
    group, key = dotted.split(".")
    value = getattr(getattr(run_cfg, group), key)
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("flags, variable, raw, setting, parsed, default", ENV_CASES,
                         ids=[f"{c[1]}-{c[3]}" for c in ENV_CASES])
def test_env_variable_sets_the_option_the_flag_selects(flags, variable, raw, setting, parsed, default,
                                                       monkeypatch):
    for name in documented_variables():
        monkeypatch.delenv(name, raising=False)
    overrides = cli.translate(parse(flags))
    assert _setting(resolve_config(compose_config(overrides)), setting) == default
    monkeypatch.setenv(variable, raw)
    assert _setting(resolve_config(compose_config(overrides)), setting) == parsed


def test_every_documented_variable_is_exercised():
    assert {c[1] for c in ENV_CASES} == set(documented_variables())


@pytest.mark.parametrize("env, flags, needle", [
    ({"DG_FBC_THRESHOLD": "abc"}, ["--cache_type", "first_block_cache"], "DG_FBC_THRESHOLD='abc' is not a number"),
    ({"DG_PAB_TIMESTEP_SKIP": "800"}, ["--cache_type", "pab"], "DG_PAB_TIMESTEP_SKIP='800' needs 2 integers"),
])
def test_malformed_env_value_is_an_error_naming_the_variable(env, flags, needle, tmp_path, testbed_cache):
    result = run(cli_cmd(["t2i", *flags, "--dry_run"], testbed_cache), tmp_path, env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and needle in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("front_end", ["diffgentor t2i", "python -m diffgentor"])
def test_env_variable_reaches_the_plan_through_both_front_ends(front_end, tmp_path, testbed_cache):
    if front_end == "diffgentor t2i":
        cmd = cli_cmd(["t2i", "--cache_type", "first_block_cache", "--dry_run"], testbed_cache)
    else:
        cmd = [sys.executable, "-m", "diffgentor", "+cache=first_block_cache", "dry_run=true",
               f"cache_dir={testbed_cache}"]
    result = run(cmd, tmp_path, env={"DG_FBC_THRESHOLD": "0.35"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+\d+\. first_block_cache \{'threshold': 0\.35\} -> supported$", result.stdout, re.M), \
        result.stdout


# --------------------------------------------------------------------------------------------------------
# --help, support, report.

def test_top_level_help_lists_commands_and_variables(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    for word in ("t2i", "report", "support", *documented_variables()):
        assert word in out


def test_t2i_help_groups_flags_and_shows_defaults(capsys):
    code, out, _ = run_main(["t2i", "--help"], capsys)
    assert code == 0
    for heading in ("model:", "generation:", "optimizations:", "output:", "examples:", "environment variables"):
        assert f"\n{heading}" in out, heading
    for flag in ("--backend", "--model_name", "--prompt", "--prompts_file", "--output_dir", "--torch_dtype",
                 "--enable_tf32", "--no-enable_tf32", "--enable_compile", "--attention_backend",
                 "--enable_xformers", "--enable_fuse_qkv", "--cache_type", "--num_inference_steps",
                 "--guidance_scale", "--height", "--width", "--seed", "--num_images_per_prompt", "--batch_size",
                 "--dry_run", *documented_variables()):
        assert flag in out, flag
    assert "(default: on)" in out and "black-forest-labs/FLUX.1-dev" in out
    assert "max-autotune-no-cudagraphs" in out


def test_support_table_is_generated_from_the_declarations():
    from diffgentor.optimize.compat import conflicts, families_supporting
    from diffgentor.optimize.registry import load_all

    table = cli.support_table()
    header, *rows = table.split("\n\n")[0].splitlines()
    assert header.split() == ["optimizer", *FAMILIES]
    marks = {row.split()[0]: row.split()[1:] for row in rows}
    assert set(marks) == set(load_all())
    for name, row in marks.items():
        assert row == ["✓" if f in families_supporting(name) else "✗" for f in FAMILIES], name
    for conflict in conflicts():
        assert f"{conflict.first} x {conflict.second}" in table
    markdown = cli.support_table(markdown=True)
    assert markdown.startswith("| optimizer | " + " | ".join(FAMILIES) + " |")


def test_support_command_prints_the_table(capsys):
    cli.main(["support"])
    out = capsys.readouterr().out
    assert out.startswith("Optimizer x pipeline family") and cli.support_table() in out


def test_report_calls_rebuild_report(tmp_path, monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("diffgentor.sweep")
    fake.rebuild_report = lambda path, **kwargs: calls.append((path, kwargs)) or "3 jobs, 0 failed"
    monkeypatch.setitem(sys.modules, "diffgentor.sweep", fake)
    cli.main(["report", str(tmp_path)])
    cli.main(["report", str(tmp_path), "--baseline", "0"])
    assert calls == [(tmp_path, {}), (tmp_path, {"baseline": "0"})]
    assert f"{tmp_path}: 3 jobs, 0 failed" in capsys.readouterr().out


@pytest.mark.slow
def test_report_rebuilds_a_real_sweep(tmp_path, testbed_cache):
    """A two-job sweep through `diffgentor t2i ... -- -m`, then its summary rebuilt by `diffgentor report`."""
    sweep = tmp_path / "sweep"
    result = run(cli_cmd(["t2i", "--steps", "2", "--output_dir", str(sweep)], testbed_cache,
                         passthrough=("-m", "seed=0,1")), tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(list(sweep.glob("*/run.json"))) == 2
    (sweep / "summary.md").unlink(missing_ok=True)
    result = run([sys.executable, "-m", "diffgentor.cli", "report", str(sweep)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{sweep}: ") and (sweep / "summary.md").is_file()


def test_report_errors(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(["report", str(tmp_path / "missing")], capsys)
    assert code == 1 and "no such folder" in err
    monkeypatch.setitem(sys.modules, "diffgentor.sweep", None)  # the module not there (yet)
    code, _, err = run_main(["report", str(tmp_path)], capsys)
    assert code == 1 and err.startswith("error: ") and "rebuild_report" in err
