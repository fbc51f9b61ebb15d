"""The contract every optimizer follows: select from the config, check before load, apply, prove it, remove.

An optimizer is a small class registered under a unique name (see registry.py). The class is its one
declaration: name, stage, config group and settings dataclass, the families it serves and why not the others,
the pairs it conflicts with, and the package it needs; the registry, the compatibility table (compat.py),
`diffgentor support` and the conf/ schemas are derived from it. Optimizer modules import torch and diffusers
inside their methods only, so that reading the declarations (composing a config, --help) imports neither.
Its life in a run:

1. `select(run_cfg)` returns its settings when the config asks for it, else None.
2. `check(family)` raises UnsupportedError / MissingPackageError BEFORE any weights load (packages,
   pipeline-family specifics beyond the table in compat.py).
3. `apply(pipe)` changes the loaded pipeline in place; `before_timed_calls(pipe)` takes out, after the
   warmup, what measured the warmup (compile's first-call timer), so the timed calls carry nothing of ours.
4. `instrument(pipe)` / `uninstrument(pipe)` bracket the evidence pass (one more generation after the timed
   calls) for what can only be measured by wrapping code; `evidence(pipe)` then returns measured facts
   proving it took effect (counts, flags, fused modules, compile time). It must not be empty.
5. `remove(pipe)` undoes it where that is possible (needed for in-process sweeps).
6. `release()` undoes only its process-wide side effects, after every run (run.py), applied or failed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, ClassVar, Optional

from diffgentor.families import ALL_FAMILIES


@dataclass(frozen=True)
class Conflict:
    """Two optimizer tags that cannot be combined ("error") or only with care ("warn"). Declared by the
    optimizer whose tag is `second`, which is the one refused."""

    first: str
    second: str
    severity: str  # "error" | "warn"
    reason: str


@dataclass(frozen=True)
class EnvVariable:
    """A DG_* variable the product document promises: it sets `field` of the optimizer's Settings, whose
    dataclass default is the variable's default (declared there once; conf/ reads it as `${dg.env:NAME}`)."""

    name: str
    field: str
    help: str
    #: The values it may take, when only some are valid (checked when the config resolves).
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    """What the run will load, resolved once before load: every optimizer checks and applies against it."""

    family: str
    device: str = "cpu"
    #: Weights dtype (a torch.dtype), or None when not known (e.g. a plan made for a loaded pipeline).
    dtype: Any = None


class Optimizer:
    """Base class; subclasses set the class variables and override the methods they need."""

    #: Unique registry key, also the `name` recorded in run.json.
    name: ClassVar[str]
    #: The stage it is applied in (registry.STAGE_ORDER says the order and why).
    stage: ClassVar[str]
    #: Config group whose options select this optimizer ("cache", "compile", ...), or None for a flag.
    config_group: ClassVar[Optional[str]] = None
    #: Structured-config dataclass for the group option (registered in Hydra's ConfigStore).
    Settings: ClassVar[Optional[type]] = None
    #: The pipeline families it is known to take effect on, and why the others are refused.
    families: ClassVar[frozenset[str]] = ALL_FAMILIES
    refused_because: ClassVar[str] = ""
    #: Pairs refused (or warned about) when this optimizer's tags meet another's (see tags()).
    conflicts: ClassVar[tuple[Conflict, ...]] = ()
    #: The DG_* variables that set its settings (envvars.py derives the table, defaults and checks).
    env_variables: ClassVar[tuple[EnvVariable, ...]] = ()

    @classmethod
    def settings_default(cls, field_name: str) -> Any:
        """The Settings dataclass's default for `field_name` (its default_factory called)."""
        from dataclasses import MISSING, fields

        found = {f.name: f for f in fields(cls.Settings)}[field_name]
        return found.default_factory() if found.default is MISSING else found.default

    def __init__(self, settings: Any = None, target: Optional[Target] = None):
        self.settings = settings
        self.target = target or Target(family="", device="cpu")

    @property
    def device(self) -> str:
        """The run's device ("cpu", "cuda:1", ...), for checks that depend on it (offload needs an accelerator)."""
        return self.target.device

    @property
    def dtype(self) -> Any:
        return self.target.dtype

    @classmethod
    def active_group(cls, run_cfg: Any, group_name: Optional[str] = None) -> Any:
        """The settings of config group `group_name` (default: this optimizer's), unless absent or `none`;
        for groups whose every option selects the same optimizer (attention backends, compile modes)."""
        group = getattr(run_cfg, group_name or cls.config_group, None)
        return group if getattr(group, "name", None) not in (None, "none") else None

    @classmethod
    def select(cls, run_cfg: Any) -> Any:
        """Return this optimizer's settings if `run_cfg` asks for it, else None."""
        group = getattr(run_cfg, cls.config_group, None) if cls.config_group else None
        if group is not None and getattr(group, "name", None) == cls.name:
            return group
        return None

    def params(self) -> dict:
        """The parameters recorded in run.json and printed in the plan."""
        if is_dataclass(self.settings):
            return {k: v for k, v in asdict(self.settings).items() if k != "name"}
        return dict(self.settings) if isinstance(self.settings, dict) else {}

    def tags(self) -> set[str]:
        """Names matched against the declared conflicts (e.g. "attention:flash" besides "attention")."""
        return {self.name}

    def check(self, family: str) -> None:
        """Refuse before load (missing package, unsupported variant). Family support is in compat.py."""

    def check_model(self, source: Any, run_cfg: Any) -> list[str]:
        """Refusals that need the model's own configs (read from its folder before load, when it is local;
        `source` is pipeline.ModelSource) and the run's values; [] when nothing is wrong."""
        return []

    def apply(self, pipe: Any) -> None:
        raise NotImplementedError

    def before_timed_calls(self, pipe: Any) -> None:
        """The warmup is over: take out whatever measured it (compile's call timer), so that the timed calls
        run what a user would run without diffgentor."""

    def instrument(self, pipe: Any) -> None:
        """Attach what measures this optimizer's effect for the evidence pass, which runs after the timed
        calls: the timed calls never carry it. Most optimizers need none (their evidence is read from the
        pipeline or from counters that cost nothing)."""

    def uninstrument(self, pipe: Any) -> None:
        """Detach what `instrument` attached; what it measured stays readable by `evidence`."""

    def evidence(self, pipe: Any) -> dict:
        raise NotImplementedError

    def remove(self, pipe: Any) -> None:
        raise NotImplementedError(f"{self.name} cannot be removed from a loaded pipeline")

    def release(self) -> None:
        """Undo process-wide side effects (global registries, compiler flags) when the run is over, so the next
        job of an in-process sweep starts clean; the pipeline is left as it is. Safe when apply() never ran."""


@dataclass
class OptimizationRecord:
    """One entry of run.json's `optimizations` list."""

    name: str
    params: dict = field(default_factory=dict)
    applied: bool = False
    evidence: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)
