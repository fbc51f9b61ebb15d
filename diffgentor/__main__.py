"""`python -m diffgentor [overrides]`: the Hydra entry point."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from diffgentor.config import register_configs
from diffgentor.errors import DiffgentorError

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger("diffgentor")

register_configs()


def _show_full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    """Run one job; a user error is one line on stderr and a non-zero exit (a sweep goes on)."""
    from diffgentor.run import execute

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        data = execute(cfg, run_dir, list(hydra_cfg.overrides.task))
    except DiffgentorError as exc:
        if _show_full_errors():
            raise
        print(f"error: {exc}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            return None
        sys.exit(1)
    if data is not None:
        images = len(data["images"])
        print(f"wrote {images} image{'s' * (images != 1)} to {run_dir / 'images'}  (record: {run_dir / 'run.json'})")
    return None


if __name__ == "__main__":
    main()
