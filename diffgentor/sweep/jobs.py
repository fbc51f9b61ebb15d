"""The jobs of a sweep folder: each job folder's run.json, its number, and a label saying what it varies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from diffgentor.errors import DiffgentorError
from diffgentor.record import RUN_FILE
from diffgentor.resume import VOLATILE_KEYS, load_record


class SweepError(DiffgentorError):
    """The folder holds no sweep to summarise, or the summary cannot choose what was asked."""


@dataclass
class Job:
    """One job folder of the sweep and its run.json."""

    num: int
    folder: Path
    record: dict
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.record.get("status") == "ok"

    @property
    def overrides(self) -> list[str]:
        return [str(o) for o in self.record.get("overrides", [])]

    def latency_per_image_s(self, statistic: str = "median") -> Optional[float]:
        """Latency of one pipeline call (its median, min or max over the timed calls) divided by the images one
        call makes (batch_size)."""
        latency = (self.record.get("timings") or {}).get("latency_s") or {}
        batch = (self.record.get("config") or {}).get("batch_size") or 1
        value = latency.get(statistic)
        return value / batch if isinstance(value, (int, float)) and value > 0 else None

    @property
    def timed_calls(self) -> int:
        return int(((self.record.get("timings") or {}).get("latency_s") or {}).get("n") or 0)




def _job_number(folder: Path, fallback: int) -> int:
    """hydra.job.num from the job's .hydra/hydra.yaml; else the folder's leading number; else its order."""
    num = yaml_path(folder / ".hydra" / "hydra.yaml", "hydra", "job", "num")
    if isinstance(num, int):
        return num
    match = re.match(r"(\d+)[-_]", folder.name)
    return int(match.group(1)) if match else fallback


def yaml_path(path: Path, *keys: str) -> Any:
    """The value at `keys` in a YAML file; None when the file, or any key on the way, is missing or bad."""
    import yaml

    try:
        value: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _label_parts(job: Job) -> list[str]:
    """The overrides that say what the job computes (no '+', no volatile keys such as cache_dir)."""
    parts = []
    for override in job.overrides:
        key = _override_key(override)
        if key.split(".")[0] in VOLATILE_KEYS or key.startswith("hydra."):
            continue
        parts.append(override.lstrip("+"))
    return parts


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder under `sweep_dir` holding a run.json, by job number, labelled by what varies."""
    jobs = []
    for order, path in enumerate(sorted(sweep_dir.rglob(RUN_FILE))):
        record, unreadable = load_record(path.parent)
        if record is None:  # a corrupt or foreign record is a failed row saying why, never a crash
            record = {"status": "failed", "error": unreadable or f"unreadable {RUN_FILE}"}
        jobs.append(Job(_job_number(path.parent, order), path.parent, record))
    if not jobs:
        raise SweepError(f"no {RUN_FILE} under {sweep_dir}: give the folder of a sweep "
                         "(`python -m diffgentor -m ...` writes multirun/<date>/<time>)")
    jobs.sort(key=lambda job: (job.num, str(job.folder)))
    parts = [_label_parts(job) for job in jobs]
    common = set.intersection(*(set(p) for p in parts)) if len(jobs) > 1 else set()
    for job, job_parts in zip(jobs, parts):
        job.label = " ".join(p for p in job_parts if p not in common) or f"job {job.num}"
    return jobs
