"""The job the others are measured against: the one without optimizations, or sweep.baseline=JOB."""

from __future__ import annotations

from typing import Optional

from diffgentor.sweep.jobs import Job, SweepError


def _is_unoptimized(job: Job) -> bool:
    """Nothing recorded but precision settings (TF32 flags), which every run records."""
    from diffgentor.optimize.registry import load_all

    optimizers = load_all()
    return all(getattr(optimizers.get(o.get("name")), "stage", None) == "precision"
               for o in job.record.get("optimizations", []))


def _matches(job: Job, wanted: str) -> bool:
    if wanted.isdigit():
        return job.num == int(wanted)
    if wanted == job.folder.name:
        return True
    items = {item.strip().lstrip("+") for item in wanted.split(",") if item.strip()}
    return bool(items) and items <= {o.lstrip("+") for o in job.overrides}


def choose_baseline(jobs: list[Job], wanted: Optional[str]) -> tuple[Optional[Job], str]:
    """The baseline job and a sentence saying which and why; SweepError when `wanted` picks no single job."""
    if wanted is not None and str(wanted).strip():
        wanted = str(wanted).strip()
        found = [job for job in jobs if _matches(job, wanted)]
        if len(found) != 1:
            which = f"jobs {', '.join(str(j.num) for j in found)}" if found else "no job"
            raise SweepError(
                f"sweep.baseline={wanted!r} matches {which} of {len(jobs)}: give a job number "
                f"(0-{max(j.num for j in jobs)}), a job folder name, or overrides that only one job has, "
                "quoted, e.g. 'sweep.baseline=\"+cache=none\"'")
        job = found[0]
        return job, f"job {job.num} ({job.label}), chosen with sweep.baseline={wanted}"
    candidates = [job for job in jobs if job.ok and _is_unoptimized(job)]
    if not candidates:
        return None, ("no baseline: no successful job ran without optimizations; add one to the sweep "
                      "(e.g. +cache=none,...) or pick one with sweep.baseline=JOB_NUMBER")
    # fp32 first: a bf16 job is itself a speed/quality trade-off.
    candidates.sort(key=lambda j: (j.record.get("dtype") not in (None, "float32"), j.num))
    job = candidates[0]
    note = f"job {job.num} ({job.label}): the job with no optimizations"
    if len(candidates) > 1:
        others = ", ".join(str(j.num) for j in candidates[1:])
        note += f" (the first of several: {others} too; pick one with sweep.baseline=JOB_NUMBER)"
    return job, note
