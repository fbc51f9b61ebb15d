"""The Hydra launchers a sweep can run on (presets in conf/hydra/launcher/), the package each needs, and the
GPU a job takes when a node's GPUs run a sweep's jobs in parallel.

The launchers are Hydra's own plugins; diffgentor only names them, checks that the plugin is installed before
Hydra starts (one line saying which extra to install, instead of Hydra's "could not find
hydra/launcher/..."), and lets `device=auto` spread parallel jobs over the GPUs.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Optional, Sequence

from diffgentor.errors import MissingPackageError

#: hydra/launcher option -> (the plugin's module, its pip package, diffgentor's extra). The plugins' own
#: option names (joblib, submitit_local, submitit_slurm, ray) work too.
LAUNCHER_PLUGINS = {
    "parallel": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "joblib"),
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "joblib"),
    "processes": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm"),
    "ray_cluster": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher", "ray"),
    "ray": ("hydra_plugins.hydra_ray_launcher", "hydra-ray-launcher", "ray"),
}
#: Launchers whose jobs run at the same time on this node (so each should take its own GPU).
PARALLEL_ON_ONE_NODE = ("hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",)
_LAUNCHER_OVERRIDE = re.compile(r"^hydra/launcher=(?P<option>[\w-]+)$")


def check_launcher_plugin(argv: Sequence[str]) -> None:
    """Refuse, before Hydra starts, a `hydra/launcher=NAME` whose plugin is not installed."""
    for arg in argv:
        match = _LAUNCHER_OVERRIDE.match(arg)
        known = LAUNCHER_PLUGINS.get(match.group("option")) if match else None
        if known is not None and not installed(known[0]):
            _, package, extra = known
            raise MissingPackageError(arg, package, extra)


#: The tuning studies (conf/experiment/tune_*.yaml) run on Hydra's Optuna sweeper.
OPTUNA_SWEEPER = ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper", "tune")
_SWEEPER_OVERRIDE = re.compile(r"^(hydra/sweeper=optuna|\+?experiment=tune_[\w-]+)$")


def check_sweeper_plugin(argv: Sequence[str]) -> None:
    """Refuse, before Hydra starts, a tuning study (`+experiment=tune_*`, `hydra/sweeper=optuna`) without
    the Optuna sweeper plugin."""
    for arg in argv:
        if _SWEEPER_OVERRIDE.match(arg) and not installed(OPTUNA_SWEEPER[0]):
            raise MissingPackageError(arg, OPTUNA_SWEEPER[1], OPTUNA_SWEEPER[2])


def installed(module: str) -> bool:
    """Whether `module` can be imported (found, not imported: the check costs no import time)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ModuleNotFoundError, ValueError):  # a missing parent; a module without a spec
        return False


def parallel_job_gpu(gpus: int) -> Optional[int]:
    """The GPU index for this job when its launcher runs jobs in parallel on this node: job N takes
    N % gpus. None: not such a job (a single run, the basic launcher, SLURM, which gives each job its own)."""
    from hydra.core.hydra_config import HydraConfig

    if gpus < 1 or not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.launcher.get("_target_") not in PARALLEL_ON_ONE_NODE:
        return None
    return int(hydra_cfg.job.num) % gpus
