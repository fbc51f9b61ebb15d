"""One sweep job's bookkeeping around run.py: the config hash that `resume=true` compares, the skip decision,
and the failed run.json of a job that stopped before run.py started its record (a refused plan, a bad
prompts file), so that every job of a sweep leaves a record the summary can list.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from diffgentor.record import RUN_FILE, write_json_atomic

#: Top-level keys that do not change what a job computes: left out of the hash. (hydra.* is never in a job's
#: config; `cache_dir` only says where the embedded testbeds are stored; `sweep` only affects the summary.)
VOLATILE_KEYS = frozenset({"resume", "overwrite", "progress", "progress_steps", "cache_dir", "sweep", "reuse_model",
                           "reuse_model_max", "tracking", "tune"})


def config_hash(config: dict) -> str:
    """A short stable hash of a resolved config (as run.json stores it), volatile keys left out."""
    return digest({key: value for key, value in config.items() if key not in VOLATILE_KEYS})


def digest(value: Any) -> str:
    """A short stable hash of JSON-like data. One JSON round trip first, so live data and the same read back
    from a JSON file hash the same."""
    canonical = json.dumps(json.loads(json.dumps(value, default=str)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def read_record(run_dir: Path) -> Optional[dict]:
    """The job's run.json, or None when there is none or it cannot be used (see load_record)."""
    return load_record(run_dir)[0]


def load_record(run_dir: Path) -> tuple[Optional[dict], Optional[str]]:
    """(record, None); (None, None) when there is no run.json; (None, why) when it cannot be used: unreadable,
    not JSON (a job killed mid-write of an old, non-atomic record), or not shaped as run.json is."""
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None, f"unreadable {RUN_FILE} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    problem = shape_problem(data)
    return (None, f"unreadable {RUN_FILE} ({problem})") if problem else (data, None)


def _number_or_none(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def _image_problem(image: Any) -> Optional[str]:
    if not isinstance(image, dict) or not isinstance(image.get("file"), str):
        return "an images entry without a file name"
    file = Path(image["file"])
    if file.is_absolute() or ".." in file.parts:
        return f"image file {image['file']!r} is outside the run folder"
    if not isinstance(image.get("prompt", ""), str) or not isinstance(image.get("seed", 0), int):
        return f"image {image['file']!r} has a prompt or seed of the wrong type"
    return None


def shape_problem(record: Any) -> Optional[str]:
    """What makes `record` unusable as a run.json for report and resume (None: usable): the fields they read
    must have the types run.py writes."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    expected = {"status": str, "error": str, "dtype": str, "config": dict, "overrides": list, "images": list,
                "optimizations": list, "timings": dict, "memory": dict}
    for key, kind in expected.items():
        if record.get(key) is not None and not isinstance(record[key], kind):
            return f"{key} is a {type(record[key]).__name__}, not a {kind.__name__}"
    for image in record.get("images") or []:
        problem = _image_problem(image)
        if problem:
            return problem
    latency = (record.get("timings") or {}).get("latency_s")
    if latency is not None and not (isinstance(latency, dict) and _number_or_none(latency.get("median"))):
        return "timings.latency_s has no numeric median"
    for key in ("load_s", "optimize_s", "warmup_s"):
        if not _number_or_none((record.get("timings") or {}).get(key)):
            return f"timings.{key} is not a number"
    if not _number_or_none((record.get("memory") or {}).get("peak_bytes")):
        return "memory.peak_bytes is not a number"
    for entry in record.get("optimizations") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("evidence", {}), dict) \
                or not _number_or_none(entry.get("evidence", {}).get("compute_fraction")):
            return "an optimizations entry is not shaped as diffgentor writes it"
    return None


def completed(run_dir: Path, config: dict) -> Optional[dict]:
    """The job's run.json when it is done for this very config: status ok, same hash, every image present."""
    record = read_record(run_dir)
    if not record or record.get("status") != "ok" or not isinstance(record.get("config"), dict):
        return None
    if config_hash(record["config"]) != config_hash(config):
        return None
    if not all((run_dir / image["file"]).is_file() for image in record.get("images") or []):
        return None
    return record


def failure_message(exc: BaseException) -> str:
    """The one-line error recorded in run.json (the same form run.py records)."""
    from diffgentor.signals import interrupt_of

    interrupt = interrupt_of(exc)
    if interrupt:
        return f"interrupted by {interrupt[0]}"
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {message}"


ENDED_BADLY = ("failed", "refused", "interrupted")


def record_failure(run_dir: Path, cfg: DictConfig, overrides: list[str], exc: BaseException,
                   status: str = "failed") -> None:
    """Make sure the job's run.json says "failed" (or "refused", before load) with the error. run.py already
    did when it had started the record; a job stopped before that gets a record here, with its config as far
    as it resolves, and `reasons`: every refusal (RefusedError.reasons) or the one error."""
    from diffgentor.runfolder import locked_by_another

    record = read_record(run_dir)
    if record is not None and record.get("status") in (*ENDED_BADLY, "ok") or locked_by_another(run_dir):
        return  # already says how it ended, or is another run's (finished, or being written now)
    if record is None:
        try:
            config: Any = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        except Exception:  # the failure may be the config itself (a bad DG_* variable): keep it unresolved
            config = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        record = {"config": config, "overrides": list(overrides), "images": [], "optimizations": []}
    record.update(status=status, error=failure_message(exc),
                  reasons=list(getattr(exc, "reasons", None) or [str(exc).splitlines()[0] if str(exc) else
                                                                 type(exc).__name__]))
    write_json_atomic(run_dir / RUN_FILE, record, strict=True)
