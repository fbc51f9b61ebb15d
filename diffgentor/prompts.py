"""Prompts in, image jobs out: one job per image, each with the seed that reproduces it."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from diffgentor.errors import ConfigError


@dataclass(frozen=True)
class PromptSpec:
    prompt: str
    seed: Optional[int] = None
    negative_prompt: Optional[str] = None


@dataclass(frozen=True)
class ImageJob:
    index: int
    prompt: str
    seed: int
    negative_prompt: Optional[str]


SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


def _read_text(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped; anything else is one clear error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"prompts_file={path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                          "save it as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"prompts_file={path}: holds NUL bytes, so it is not a text file; give a .txt, .jsonl "
                          "or .csv of prompts")
    return text


def _read_txt(path: Path) -> list[PromptSpec]:
    lines = _read_text(path).splitlines()
    return [PromptSpec(line.strip()) for line in lines if line.strip()]


def _read_jsonl(path: Path) -> list[PromptSpec]:
    specs = []
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg}); each line must be an object like "
                              '{"prompt": "...", "seed": 1}') from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ConfigError(f'{where}: needs a non-empty string "prompt" key, e.g. {{"prompt": "a cat"}}')
        seed = row.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f'{where}: "seed" must be an integer, got {seed!r}')
        negative = row.get("negative_prompt")
        if negative is not None and not isinstance(negative, str):
            raise ConfigError(f'{where}: "negative_prompt" must be a string, got {negative!r}')
        specs.append(PromptSpec(row["prompt"].strip(), seed, negative))
    return specs


def _read_csv(path: Path) -> list[PromptSpec]:
    with io.StringIO(_read_text(path), newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "prompt" not in reader.fieldnames:
            raise ConfigError(f"{path}: needs a header row with a 'prompt' column, got {reader.fieldnames}")
        specs = []
        for number, row in enumerate(reader, 2):
            prompt = (row.get("prompt") or "").strip()
            if not prompt:
                continue
            seed_text = (row.get("seed") or "").strip()
            try:
                seed = int(seed_text) if seed_text else None
            except ValueError:
                raise ConfigError(f"{path}:{number}: seed {seed_text!r} is not an integer") from None
            specs.append(PromptSpec(prompt, seed, (row.get("negative_prompt") or "").strip() or None))
    return specs


READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".csv": _read_csv}


def read_prompts_file(path_text: str) -> list[PromptSpec]:
    """Read a .txt / .jsonl / .csv prompts file; every problem is one ConfigError naming file and line."""
    path = Path(path_text).expanduser()
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ConfigError(f"prompts_file={path_text}: unknown extension; use one of {', '.join(READERS)}")
    if not path.is_file():
        raise ConfigError(f"prompts_file={path_text}: file not found (give an existing path, "
                          "relative to where you run diffgentor)")
    specs = reader(path)
    if not specs:
        raise ConfigError(f"prompts_file={path_text}: contains no prompts")
    return specs


def image_jobs(specs: list[PromptSpec], images_per_prompt: int, base_seed: int,
               negative_prompt: Optional[str]) -> list[ImageJob]:
    """Expand prompts to one job per image: image i gets seed base_seed + i, unless its prompt has a seed
    (then that seed + k for its k-th image)."""
    if images_per_prompt < 1:
        raise ConfigError(f"num_images_per_prompt={images_per_prompt}: must be at least 1")
    jobs = []
    for spec in specs:
        for k in range(images_per_prompt):
            index = len(jobs)
            seed = spec.seed + k if spec.seed is not None else base_seed + index
            if not 0 <= seed < SEED_LIMIT:
                raise ConfigError(f"seed {seed} of image {index} ({spec.prompt[:40]!r}): seeds are 0 <= seed < 2**64; "
                                  "lower seed= or the prompts file's seed")
            jobs.append(ImageJob(index, spec.prompt, seed, spec.negative_prompt or negative_prompt))
    return jobs


def batches(jobs: list[ImageJob], batch_size: int) -> list[list[ImageJob]]:
    """Consecutive batches; a batch never mixes negative prompts (one pipeline call takes one list)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size}: must be at least 1")
    out: list[list[ImageJob]] = []
    for job in jobs:
        if out and len(out[-1]) < batch_size and (out[-1][0].negative_prompt is None) == (job.negative_prompt is None):
            out[-1].append(job)
        else:
            out.append([job])
    return out
