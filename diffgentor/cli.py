"""`diffgentor`: the seed's command line (`diffgentor t2i --backend diffusers ...`) over the one Hydra app.

`t2i` translates its flags into Hydra override strings and then runs the very same Hydra app as
`python -m diffgentor OVERRIDES` (sys.argv swapped in), so composition, the DG_* variables (read by the
YAML through `${dg.env:...}`), run folders, logging and multirun behave identically: no second code path.
`report` rebuilds a sweep's summary; `support` prints the compatibility matrix the optimizers declare.

The translation itself is t2i.py; what the flags may name is read from conf/ by conf_options.py; this module
holds the parser, the commands and main().
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

from diffgentor.conf_options import compile_modes, group_options, model_entries, root_default
from diffgentor.envvars import documented_variables
from diffgentor.errors import DiffgentorError, user_message
from diffgentor.families import FAMILIES
from diffgentor.t2i import SUPPORTED_BACKENDS, TORCH_DTYPES, CliError, hydra_argv, shell_quote, translate

def run_hydra_app(argv: Sequence[str]) -> None:
    """Run `python -m diffgentor ARGV` in this process: the same hydra.main, reading sys.argv."""
    from diffgentor.__main__ import main as hydra_main

    saved = sys.argv
    sys.argv = ["diffgentor", *argv]
    try:
        hydra_main()
    finally:
        sys.argv = saved



def cmd_t2i(args: argparse.Namespace, passthrough: Sequence[str]) -> None:
    overrides = translate(args, passthrough)
    argv = hydra_argv(overrides, passthrough)
    if args.dry_run:
        print(f"translated to: python -m diffgentor {' '.join(map(shell_quote, argv))}".rstrip(), flush=True)
    run_hydra_app(argv)


# --------------------------------------------------------------------------------------------------------
# report, support

def cmd_report(args: argparse.Namespace, passthrough: Sequence[str]) -> None:
    sweep_dir = Path(args.sweep_dir).expanduser()
    if not sweep_dir.is_dir():
        raise CliError(f"{args.sweep_dir}: no such folder; give a sweep folder written by "
                       "`python -m diffgentor -m ...` (e.g. multirun/<date>/<time>)")
    try:
        from diffgentor.sweep import rebuild_report
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name not in (None, "diffgentor.sweep"):
            raise  # diffgentor.sweep exists but needs something missing: show the real failure
        raise CliError("`diffgentor report` is not available in this build: diffgentor.sweep.rebuild_report "
                       f"is missing ({exc})") from None
    result = rebuild_report(sweep_dir, **({"baseline": args.baseline} if args.baseline is not None else {}))
    print(f"{sweep_dir}: {result}" if result else f"report rebuilt in {sweep_dir}")


def support_table(markdown: bool = False) -> str:
    """The optimizer x pipeline-family matrix and the conflicting pairs, derived from the optimizers'
    declarations (optimize/compat.py), so the table cannot disagree with what a run refuses."""
    from diffgentor.optimize.compat import conflicts, family_support
    from diffgentor.optimize.registry import stage_of

    support = family_support()
    names = sorted(support, key=lambda n: (stage_of(n), n))
    families = list(FAMILIES)
    rows = [[n] + ["✓" if f in support[n].families else "✗" for f in families] for n in names]
    reasons = [(n, support[n].reason) for n in names if support[n].families != frozenset(families)]
    header = ["optimizer", *families]
    lines = []
    if markdown:
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(f"`{r[0]}`" if i == 0 else c for i, c in enumerate(r)) + " |" for r in rows]
    else:
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        lines += ["  ".join(c.center(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                  for r in rows]
    bullet = "- " if markdown else "  "
    if reasons:
        lines += ["", "Refused elsewhere because:"]
        lines += [f"{bullet}{n}: {reason}" for n, reason in reasons]
    lines += ["", "Conflicting pairs (error: refused at plan time; warn: runs, with a warning):"]
    lines += [f"{bullet}{c.first} x {c.second} ({c.severity}): {c.reason}" for c in conflicts()] or \
             [f"{bullet}(none)"]
    return "\n".join(lines)


def cmd_support(args: argparse.Namespace, passthrough: Sequence[str]) -> None:
    print("Optimizer x pipeline family (declared by each optimizer; ✓ = takes effect, "
          "✗ = refused before any weights load)\n\n" if args.format == "text" else "", end="")
    print(support_table(markdown=args.format == "markdown"))


# --------------------------------------------------------------------------------------------------------
# The parser.

class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one `error:` line and exit 1, like every other user error."""

    def error(self, message: str):  # noqa: D102 - argparse API
        hint = "; Hydra overrides go after `--`" if message.startswith("unrecognized arguments") else ""
        print(f"error: {self.prog}: {message}{hint} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(1)


_FORMATTER = argparse.RawDescriptionHelpFormatter


def _env_epilog() -> str:
    variables = documented_variables()
    width = max(map(len, variables))
    lines = [f"  {name.ljust(width)}  {text}" for name, text in variables.items()]
    return ("environment variables (read by the config, so `python -m diffgentor` honours them too;\n"
            "a malformed value is an error naming the variable):\n" + "\n".join(lines))


def _add_t2i(subparsers) -> None:
    entries = model_entries()
    width = max(map(len, entries))
    models = "\n".join(f"  {n.ljust(width)}  {e.get('path') or 'embedded testbed, offline'} "
                       f"({e.get('family')})" for n, e in entries.items())
    p = subparsers.add_parser(
        "t2i", help="text to image: the seed's flags, translated to Hydra overrides",
        formatter_class=_FORMATTER,
        description="Text to image with optional speed optimizations. The flags become Hydra overrides of\n"
                    "the config `python -m diffgentor` composes (--dry_run prints them and the plan).",
        epilog="examples:\n"
               "  diffgentor t2i --backend diffusers --model_name black-forest-labs/FLUX.1-dev \\\n"
               "      --prompt \"A landscape\" --torch_dtype bfloat16 --enable_compile \\\n"
               "      --attention_backend flash --cache_type first_block_cache --enable_fuse_qkv\n"
               "  diffgentor t2i --model_name tiny-sdxl --cache_type deep_cache --dry_run\n"
               "  diffgentor t2i --cache_type first_block_cache -- cache.threshold=0.3   "
               "# extra Hydra overrides after --\n"
               "  diffgentor t2i --cache_type pab -- -m seed=0,1,2                      "
               "# Hydra flags too (a sweep)\n\n"
               "models (--model_name takes the entry name or the hub id it stands for):\n" + models + "\n\n"
               + _env_epilog())
    p.add_argument("--backend", default="diffusers", metavar="NAME",
                   help=f"inference backend; supported: {', '.join(SUPPORTED_BACKENDS)} (default: diffusers)")

    g = p.add_argument_group("model")
    g.add_argument("--model_name", metavar="NAME_OR_PATH",
                   help="a model entry or its hub id (listed below), any other hub id, or a local "
                        f"diffusers folder (default: {root_default('model')})")
    g.add_argument("--model_family", choices=sorted(FAMILIES),
                   help="pipeline family of a hub id or folder diffgentor cannot inspect before loading "
                        "(an uncached hub id offline); picks the generation defaults too "
                        "(default: read from model_index.json)")
    g.add_argument("--torch_dtype", choices=list(TORCH_DTYPES), metavar="DTYPE",
                   help="weights/compute dtype: bfloat16, float16, float32 (or bf16, fp16, fp32, auto) "
                        "(default: auto = bfloat16 on CUDA, float32 elsewhere)")
    g.add_argument("--device", help=f"auto, cpu, cuda, cuda:N or mps (default: {root_default('device')})")
    g.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: OMP_NUM_THREADS if set, else one per core; "
                        "on a shared machine use 1)")

    g = p.add_argument_group("generation")
    g.add_argument("--prompt", help=f"the prompt (default: {root_default('prompt')!r})")
    g.add_argument("--prompts_file", "--prompt_file", metavar="PATH",
                   help=".txt (one prompt a line), .jsonl ({\"prompt\", \"seed\"?, \"negative_prompt\"?}) or "
                        ".csv (a prompt column); replaces --prompt")
    g.add_argument("--negative_prompt", help="for pipelines that take one (default: none)")
    g.add_argument("--max_sequence_length", type=int, metavar="N",
                   help="text encoder tokens (FLUX: T5 length, up to 512) (default: the model entry's or "
                        "the pipeline's)")
    g.add_argument("--true_cfg_scale", type=float, metavar="G",
                   help="true classifier-free guidance with --negative_prompt, for pipelines that take it "
                        "(FLUX, Qwen-Image) (default: the pipeline's)")
    g.add_argument("--num_inference_steps", "--steps", type=int, metavar="N",
                   help="denoising steps (default: the model entry's, e.g. 28 for flux-dev)")
    g.add_argument("--guidance_scale", type=float, metavar="G", help="(default: the model entry's)")
    g.add_argument("--height", type=int, metavar="PX", help="(default: the model entry's)")
    g.add_argument("--width", type=int, metavar="PX", help="(default: the model entry's)")
    g.add_argument("--seed", type=int, help=f"image i uses seed + i (default: {root_default('seed')})")
    g.add_argument("--num_images_per_prompt", type=int, metavar="N",
                   help=f"(default: {root_default('num_images_per_prompt')})")
    g.add_argument("--batch_size", type=int, metavar="N",
                   help=f"images per pipeline call (default: {root_default('batch_size')})")
    g.add_argument("--warmup", type=int, metavar="N",
                   help="untimed warmup calls on the first batch (default: 1)")
    g.add_argument("--repeats", type=int, metavar="N",
                   help="timed calls per batch; latency is their median (default: 1, raised until the run "
                        "makes benchmark.min_timed_calls=3 timed calls, so every latency has a spread)")

    g = p.add_argument_group("optimizations", "each maps to a config group option; see `diffgentor support`")
    g.add_argument("--enable_tf32", action=argparse.BooleanOptionalAction, default=None,
                   help="TF32 matmul math on Ampere+ GPUs (default: on)")
    g.add_argument("--enable_compile", action="store_true",
                   help="torch.compile the components in DG_COMPILE_COMPONENTS with DG_COMPILE_MODE "
                        "(default mode: max-autotune-no-cudagraphs)")
    g.add_argument("--compile_mode", choices=compile_modes(), metavar="MODE",
                   help=f"{', '.join(compile_modes())}: wins over DG_COMPILE_MODE (with --enable_compile)")
    g.add_argument("--compile_regional", action="store_true",
                   help="compile only the repeated blocks: far less compile time (with --enable_compile)")
    g.add_argument("--attention_backend", choices=group_options("attention"), metavar="BACKEND",
                   help=f"attention backend: {', '.join(group_options('attention'))} (default: the model's own)")
    g.add_argument("--enable_xformers", action="store_true",
                   help="same as --attention_backend xformers (kept for backwards compatibility)")
    g.add_argument("--enable_fuse_qkv", action="store_true", help="fuse the Q, K, V projections")
    g.add_argument("--cache_type", choices=group_options("cache"), metavar="CACHE",
                   help=f"step cache: {', '.join(group_options('cache'))} (default: none)")

    g = p.add_argument_group("output")
    g.add_argument("--output_dir", "--output-dir", metavar="DIR",
                   help="run folder for images and run.json (default: outputs/<date>/<time>)")
    g.add_argument("--dry_run", action="store_true",
                   help="print the Hydra overrides and the optimization plan; load nothing")
    p.set_defaults(handler=cmd_t2i)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="diffgentor", formatter_class=_FORMATTER, allow_abbrev=False,
        description="Diffusion inference speed optimizations, measured. `diffgentor t2i` takes the seed's "
                    "flags;\n`python -m diffgentor [hydra overrides]` is the same app, configured directly.",
        epilog="run `diffgentor t2i --help` for the flags.\n\n" + _env_epilog())
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_t2i(subparsers)

    p = subparsers.add_parser("report", help="rebuild a sweep's summary (table, plots, image grid)",
                              formatter_class=_FORMATTER,
                              description="Rebuild the summary of a finished or interrupted sweep folder.")
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="a folder written by `python -m diffgentor -m ...`")
    p.add_argument("--baseline", metavar="JOB",
                   help="the job to compare against: a job number or an override it ran with "
                        "(default: the sweep's sweep.baseline, else the job without optimizations)")
    p.set_defaults(handler=cmd_report)

    p = subparsers.add_parser("support", help="print the optimizer x pipeline-family support table",
                              formatter_class=_FORMATTER,
                              description="The compatibility matrix diffgentor checks before loading weights.")
    p.add_argument("--format", choices=("text", "markdown"), default="text", help="(default: text)")
    p.set_defaults(handler=cmd_support)
    for action in subparsers.choices.values():
        action.allow_abbrev = False
    return parser


def _version() -> str:
    try:
        return metadata.version("diffgentor")
    except metadata.PackageNotFoundError:
        return "unknown"


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Everything after the first `--` goes to Hydra untouched."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Optional[Sequence[str]] = None) -> None:
    own, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(own)
    if args.command is None:
        parser.print_help(sys.stderr)
        print("\nerror: choose a command: t2i, report or support", file=sys.stderr)
        sys.exit(1)
    if passthrough and args.command != "t2i":
        parser.error(f"{args.command} takes no Hydra overrides after `--`")
    handler: Callable = args.handler
    try:
        handler(args, passthrough)
    except (DiffgentorError, OSError) as exc:
        message = user_message(exc)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
