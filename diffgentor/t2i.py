"""The seed's `diffgentor t2i` flags as Hydra override strings: the one translation between the seed's command
line and the Hydra app (model names, dtypes, caches, compile, attention, output folders, pass-through).

Nothing here runs anything: cli.py hands the overrides to the same hydra.main `python -m diffgentor` runs."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from pathlib import Path
from typing import Optional, Sequence

from diffgentor.conf_options import model_entries
from diffgentor.errors import ConfigError
from diffgentor.families import family_of_pipeline_class

SUPPORTED_BACKENDS = ("diffusers",)
#: --torch_dtype value -> conf/precision option (torch's names as in the seed, and our short ones).
TORCH_DTYPES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32",
                "bf16": "bf16", "fp16": "fp16", "fp32": "fp32", "auto": "auto"}
#: The conf/compile option `--enable_compile` selects when no --compile_mode is given: the one whose
#: mode reads DG_COMPILE_MODE (default max-autotune-no-cudagraphs, as the seed documents).
COMPILE_FROM_ENV_OPTION = "enabled"
_MULTIRUN_FLAGS = ("-m", "--multirun")


class CliError(ConfigError):
    """A command line that cannot be translated; printed as one `error:` line."""


# --------------------------------------------------------------------------------------------------------
# Hydra's override grammar: quoted values, with OmegaConf interpolations escaped, so a value is literal.

def hydra_quote(value: str) -> str:
    """Quote `value` for a Hydra override so it arrives verbatim (spaces, commas, quotes, '=', `${`)."""
    text = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", str(value))  # OmegaConf: literal ${
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)  # Hydra: escape quotes (and \ before)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)  # ... and a trailing backslash run
    return f"'{text}'"


# --------------------------------------------------------------------------------------------------------
# --model_name -> model overrides.

def _family_of_folder(folder: Path) -> Optional[str]:
    from diffgentor.pipeline import read_model_index

    class_name = read_model_index(folder)
    return family_of_pipeline_class(class_name) if class_name else None


def _family_of_cached_hub_id(repo_id: str) -> Optional[str]:
    from diffgentor.pipeline import _cached_hub_model_index

    class_name = _cached_hub_model_index(repo_id, None)
    return family_of_pipeline_class(class_name) if class_name else None


def _base_entry(family: Optional[str], entries: dict) -> str:
    """The hub entry whose generation defaults (steps, guidance, size) fit a model of `family`."""
    hub = {name: e for name, e in entries.items() if not e.get("testbed")}
    same = [name for name, e in hub.items() if e.get("family") == family]
    return (same or list(hub) or list(entries))[0]


def model_overrides(model_name: Optional[str], family: Optional[str]) -> list[str]:
    """An entry name -> `model=NAME`; an entry's hub id -> that entry; a folder or another hub id ->
    `model.path=...` on the hub entry of its family (for steps/guidance/size defaults)."""
    entries = model_entries()
    if model_name is None:
        if family:
            raise CliError("--model_family needs --model_name (a hub id or a local diffusers folder)")
        return []
    wanted = model_name.rstrip("/").casefold()
    for name, entry in entries.items():
        if name == model_name or str(entry.get("path") or "").casefold() == wanted:
            if family and entry.get("family") and family != entry["family"]:
                raise CliError(f"--model_name {model_name} is the '{entry['family']}' entry {name}; "
                               f"--model_family {family} contradicts it: drop --model_family")
            return [f"model={name}"]
    folder = Path(model_name).expanduser()
    if folder.is_dir():
        family = family or _family_of_folder(folder)
        location, label = str(folder.resolve()), folder.resolve().name
    else:
        family = family or _family_of_cached_hub_id(model_name)
        location, label = model_name, model_name
    return [f"model={_base_entry(family, entries)}", f"model.name={hydra_quote(label)}",
            f"model.path={hydra_quote(location)}", "model.testbed=null",
            f"model.family={family}" if family else "model.family=null"]


# --------------------------------------------------------------------------------------------------------
# t2i: flags -> overrides.

def _attention_option(args: argparse.Namespace) -> Optional[str]:
    backend = args.attention_backend
    if args.enable_xformers:
        if backend not in (None, "xformers"):
            raise CliError(
                f"--enable_xformers and --attention_backend {backend} both choose the attention backend "
                f"(xformers vs {backend}: they cannot be combined, see the compatibility matrix); keep one")
        backend = "xformers"
    return backend


def _passthrough_value(passthrough: Sequence[str], key: str) -> Optional[str]:
    for item in passthrough:
        if item.startswith(f"{key}="):
            return item.split("=", 1)[1].strip("'\"") or None
    return None


def translate(args: argparse.Namespace, passthrough: Sequence[str] = ()) -> list[str]:
    """The Hydra overrides `diffgentor t2i ARGS -- PASSTHROUGH` stands for (pass-through not included)."""
    if args.backend not in SUPPORTED_BACKENDS:
        raise CliError(f"--backend {args.backend} is not supported; supported backends: "
                       f"{', '.join(SUPPORTED_BACKENDS)}")
    family = args.model_family or _passthrough_value(passthrough, "model.family")
    out = model_overrides(args.model_name, family)
    values = (
        ("precision", TORCH_DTYPES.get(args.torch_dtype) if args.torch_dtype else None, False),
        ("prompt", args.prompt, True),
        ("prompts_file", _absolute(args.prompts_file), True),
        ("negative_prompt", args.negative_prompt, True),
        ("steps", args.num_inference_steps, False),
        ("guidance_scale", args.guidance_scale, False),
        ("height", args.height, False),
        ("width", args.width, False),
        ("seed", args.seed, False),
        ("num_images_per_prompt", args.num_images_per_prompt, False),
        ("batch_size", args.batch_size, False),
        ("device", args.device, True),
        ("threads", args.threads, False),
        ("max_sequence_length", args.max_sequence_length, False),
        ("true_cfg_scale", args.true_cfg_scale, False),
        ("benchmark.warmup", args.warmup, False),
        ("benchmark.repeats", args.repeats, False),
    )
    out += [f"{key}={hydra_quote(v) if quote else v}" for key, v, quote in values if v is not None]
    if args.enable_tf32 is not None:
        out.append(f"precision.tf32={str(args.enable_tf32).lower()}")
    if args.enable_fuse_qkv:
        out.append("fuse_qkv=true")
    attention = _attention_option(args)
    if attention:
        out.append(f"+attention={attention}")
    if args.cache_type:
        out.append(f"+cache={args.cache_type}")
    for flag in ("compile_mode", "compile_regional"):
        if getattr(args, flag) and not args.enable_compile:
            raise CliError(f"--{flag} needs --enable_compile")
    if args.enable_compile:
        out.append(f"+compile={args.compile_mode or COMPILE_FROM_ENV_OPTION}")
    if args.compile_regional:
        out.append("compile.regional=true")
    if args.output_dir:
        key = "hydra.sweep.dir" if any(f in passthrough for f in _MULTIRUN_FLAGS) else "hydra.run.dir"
        out.append(f"{key}={hydra_quote(_absolute(args.output_dir))}")
    if args.dry_run:
        out.append("dry_run=true")
    return out


def _absolute(path: Optional[str]) -> Optional[str]:
    return str(Path(path).expanduser().absolute()) if path else None


def hydra_argv(overrides: Sequence[str], passthrough: Sequence[str]) -> list[str]:
    """Hydra's own flags from the pass-through first (its parser wants them before the overrides)."""
    from diffgentor.internals import hydra_args_parser

    hydra_errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(hydra_errors):
            parsed = hydra_args_parser().parse_intermixed_args(list(passthrough))
    except SystemExit:
        reason = hydra_errors.getvalue().strip().splitlines()[-1:] or ["?"]
        raise CliError(f"after `--`: {reason[0].split('error: ', 1)[-1]} (see `python -m diffgentor --help`)") \
            from None
    extra = list(parsed.overrides or [])
    flags = list(passthrough)
    for item in extra:
        flags.remove(item)
    return [*flags, *overrides, *extra]



def shell_quote(token: str) -> str:
    """shlex.quote, but a token holding single quotes (a quoted override) reads better in double quotes."""
    quoted = shlex.quote(token)
    if quoted == token or "'" not in token:
        return quoted
    return '"' + re.sub(r'([\\"$`])', r"\\\1", token) + '"'
