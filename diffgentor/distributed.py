"""Data parallel over a run's images: `torchrun --nproc_per_node=N -m diffgentor ...` (or `accelerate launch`).

Every rank composes the same config and plans the same run; the image jobs are dealt out by rank
(jobs[rank::world_size]), each keeping the seed and file name it has in a single-process run. All ranks write
into ONE run folder: rank 0's clock names it (every rank is given conf/'s hydra.run.dir read at the time
rank 0 broadcasts before Hydra starts), rank 0 holds the folder and run.json, the other ranks keep their
partial records under `ranks/` and rank 0 merges them after all ranks finished (one gather: a rank that
failed still reports, and the run is recorded as failed with that rank's error; the images that were
written stay).

torch.distributed does the communication (gloo on CPU, NCCL on CUDA); each rank runs on cuda:LOCAL_RANK.
"""

from __future__ import annotations

import atexit
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

#: Where ranks other than 0 keep their partial run.json, inside the run folder.
RANKS_DIR = "ranks"


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int


def world_from_env() -> Optional[World]:
    """The torchrun / accelerate environment (RANK, WORLD_SIZE, LOCAL_RANK); None for a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1:
        return None
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def current_world() -> Optional[World]:
    """This process's World once start() ran (None in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    return world_from_env()


def start(world: World, argv: Sequence[str]) -> list[str]:
    """Join the process group (gloo on CPU, NCCL where CUDA is); returns the override that names the one run
    folder of every rank: conf/'s hydra.run.dir with its `${now:...}` read at rank 0's time (none when the
    command line names the folder itself)."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        atexit.register(dist.destroy_process_group)
    moment = [datetime.now().timestamp()]
    dist.broadcast_object_list(moment, src=0)
    if any(arg.startswith("hydra.run.dir=") for arg in argv):
        return []
    from diffgentor.conf_options import root_raw

    fixed = datetime.fromtimestamp(moment[0])
    pattern = str(root_raw()["hydra"]["run"]["dir"])
    return ["hydra.run.dir=" + re.sub(r"\$\{now:([^}]*)\}", lambda m: fixed.strftime(m.group(1)), pattern)]


def shard(items: Sequence[Any], world: Optional[World]) -> list:
    """This rank's share, dealt round-robin in order (deterministic, nothing doubled or missing)."""
    return list(items) if world is None else list(items[world.rank::world.size])


def rank_device(device: str, world: Optional[World]) -> str:
    """cuda -> cuda:LOCAL_RANK, one GPU per rank; other devices unchanged."""
    if world is not None and device == "cuda":
        return f"cuda:{world.local_rank}"
    return device


def agree(value: Any) -> list:
    """Every rank's `value`, on every rank (torch.distributed.all_gather_object)."""
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def rank_zero_first(action: Callable[[], Any]) -> Any:
    """`action()` on rank 0 first, then on the other ranks, which find its work done: for what one process
    must write alone (a testbed build: transformers' save_pretrained writes no weights on a torch.distributed
    rank other than 0, so a build there is incomplete). A failure on rank 0 fails every rank."""
    world = current_world()
    if world is None:
        return action()
    result, error = None, None
    if world.rank == 0:
        try:
            result = action()
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it before any raises
            error = exc
    verdict = agree(None if error is None else f"{type(error).__name__}: {error}")[0]
    if error is not None:
        raise error
    if verdict is not None:
        from diffgentor.errors import DiffgentorError

        raise DiffgentorError(f"rank 0: {verdict}")
    return result if world.rank == 0 else action()


def rank_folder(run_dir: Path, rank: int) -> Path:
    """Where rank `rank` (not 0) keeps its partial run.json inside the run folder."""
    return run_dir / RANKS_DIR / f"rank{rank}"


#: How long rank 0 waits for a rank that left to finish its record on disk.
RECORD_WAIT_S = 15.0


def records_on_disk(run_dir: Path, world: World, wait_s: float = RECORD_WAIT_S) -> list[dict]:
    """The other ranks' partial records as they left them (rank 0 reads them when the ranks can no longer
    exchange them: a rank that failed inside context parallelism leaves its peers' collectives broken). A
    record still "running" is read again for up to `wait_s` (the rank may be writing its ending); one that
    never ends says so."""
    import time

    deadline = time.monotonic() + wait_s
    records = [_read_record(run_dir, rank) for rank in range(1, world.size)]
    while any(r.get("status") == "running" for r in records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = [_read_record(run_dir, rank) for rank in range(1, world.size)]
    return [{**r, "status": "failed", "error": f"rank {rank} ended without finishing its record (it crashed or "
                                               "was killed: see its output)"}
            if r.get("status") == "running" else r for rank, r in enumerate(records, start=1)]


def _read_record(run_dir: Path, rank: int) -> dict:
    from diffgentor.resume import load_record

    record, unreadable = load_record(rank_folder(run_dir, rank))
    if record is None:
        return {"status": "unknown", "error": f"rank {rank} left no readable record"
                                              + (f" ({unreadable})" if unreadable else "")}
    return record


def merge_records(records: list[dict], shared_images: bool = False) -> dict:
    """Rank 0's run.json from every rank's record: all images (by file name), per-rank timings and devices,
    and the whole run's throughput. Data parallel: the ranks generate different images at the same time, so
    the run made all their timed images in the time of its slowest rank. `shared_images` (context
    parallelism): every rank took part in every image, which rank 0 wrote; the run's throughput is rank 0's."""
    images = sorted((image for record in records[:1 if shared_images else None] for image in record.get("images", [])),
                    key=lambda image: image["file"])
    ranks = [{"rank": rank, "status": "ok" if record.get("status") == "running" else record.get("status"),
              "error": record.get("error"), "device": (record.get("environment") or {}).get("device"),
              "images": len(images) if shared_images else len(record.get("images", [])),
              "timings": record.get("timings", {})} for rank, record in enumerate(records)]
    rates = [(r["timings"].get("images_per_s"), r["timings"].get("timed_s")) for r in ranks]
    throughput = None
    if rates and all(rate and seconds for rate, seconds in rates):
        throughput = rates[0][0] if shared_images else (
            sum(rate * seconds for rate, seconds in rates) / max(seconds for _, seconds in rates))
    return {"images": images,
            "distributed": {"world_size": len(records), "ranks": ranks, "images_per_s": throughput,
                            "mode": "context_parallel" if shared_images else "data_parallel"}}
