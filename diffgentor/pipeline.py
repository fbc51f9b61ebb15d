"""Load a pipeline from a model config: a hub id, a local diffusers folder, or an embedded testbed.

All three go through `DiffusionPipeline.from_pretrained` with safetensors only and no remote code, so the
testbed exercises exactly the path a real model takes.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from diffgentor.errors import ConfigError, ModelLoadError
from diffgentor.families import FAMILIES, family_of_pipeline_class

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, and what kind of pipeline they make."""

    location: str  # local folder or hub id, as given to from_pretrained
    is_local: bool
    family: str
    pipeline_class: Optional[str]
    model_id: str  # recorded in run.json and PNG chunks


def resolve_device(requested: str) -> str:
    """`auto` picks cuda > mps > cpu; an explicit device that is absent is a config error."""
    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={requested}: no CUDA device is available here; use device=auto or cpu")
    if requested not in ("cpu", "mps") and not requested.startswith("cuda"):
        raise ConfigError(f"device={requested}: unknown; use auto, cpu, cuda, cuda:N or mps")
    return requested


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return DTYPES[name]


def read_model_index(folder: Path) -> Optional[str]:
    """The pipeline class named by folder/model_index.json (None: no such file); a file that is not a JSON
    object naming its class is a ModelLoadError, not a traceback."""
    index = folder / "model_index.json"
    if not index.is_file():
        return None
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index}: unreadable ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                             "the folder is not a complete diffusers pipeline: save or download it again") from None
    if not isinstance(data, dict) or not isinstance(data.get("_class_name"), str):
        raise ModelLoadError(f"{index}: not a diffusers model index (a JSON object with \"_class_name\"); "
                             "save or download the pipeline again")
    return data["_class_name"]


def _cached_hub_model_index(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """model_index.json from the local Hugging Face cache only: planning must never download."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(repo_id, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001 - any cache problem just means "unknown before load"
        return None
    return read_model_index(Path(cached).parent) if isinstance(cached, str) else None


def _family_for(class_name: Optional[str], configured: Optional[str], where: str) -> str:
    if class_name:
        family = family_of_pipeline_class(class_name)
        if family is None:
            raise ModelLoadError(
                f"{where}: pipeline class {class_name} is not one diffgentor knows; supported families: "
                + ", ".join(sorted(FAMILIES))
            )
        return family
    if configured:
        if configured not in FAMILIES:
            raise ConfigError(f"model.family={configured}: unknown; use one of {', '.join(sorted(FAMILIES))}")
        return configured
    raise ModelLoadError(
        f"{where}: cannot tell the pipeline family before loading (no model_index.json reachable); "
        f"set model.family to one of {', '.join(sorted(FAMILIES))}"
    )


def resolve_source(model_cfg: Any, cache_dir: str) -> ModelSource:
    """Find the model and its family without loading weights (testbeds are built here, once)."""
    if model_cfg.path:
        path_text = str(model_cfg.path)
        folder = Path(path_text).expanduser()
        if folder.is_dir():
            class_name = read_model_index(folder)
            if class_name is None:
                raise ModelLoadError(f"model.path={path_text}: no model_index.json there; give a diffusers "
                                     "pipeline folder (one saved with save_pretrained)")
            family = _family_for(class_name, model_cfg.family, f"model.path={path_text}")
            return ModelSource(str(folder.resolve()), True, family, class_name, path_text)
        if not _HUB_ID.match(path_text) or path_text.startswith((".", "/", "~")):
            raise ModelLoadError(f"model.path={path_text}: no such folder; give an existing diffusers folder "
                                 "or a hub id like black-forest-labs/FLUX.1-dev")
        class_name = _cached_hub_model_index(path_text, model_cfg.revision)
        family = _family_for(class_name, model_cfg.family, f"model.path={path_text}")
        return ModelSource(path_text, False, family, class_name, path_text)
    if model_cfg.testbed:
        from diffgentor.distributed import rank_zero_first
        from diffgentor.testbed import materialize

        try:
            folder = rank_zero_first(lambda: materialize(model_cfg.testbed, Path(cache_dir).expanduser()))
        except ValueError as exc:
            raise ConfigError(f"model.testbed={model_cfg.testbed}: {exc}") from None
        class_name = read_model_index(folder)
        family = _family_for(class_name, model_cfg.family, f"testbed {model_cfg.testbed}")
        return ModelSource(str(folder), True, family, class_name, f"diffgentor-testbed/{model_cfg.testbed}")
    raise ConfigError(f"model {model_cfg.name}: set model.path (hub id or folder) or model.testbed")


def call_parameters(pipeline_class: Optional[str]) -> Optional[frozenset]:
    """The arguments the pipeline class's __call__ takes, from diffusers' class alone (no weights); None when
    the class is not known before load (an uncached hub id)."""
    if not pipeline_class:
        return None
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    return frozenset(inspect.signature(cls.__call__).parameters) if cls is not None else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def hub_failure_reason(exc: BaseException) -> str:
    """Why the hub refused, from the error diffusers wraps (it re-raises the hub's answer as an
    EnvironmentError about the cache): a gated repo needs its licence accepted, not a download."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    for cause in _causes(exc):
        if isinstance(cause, GatedRepoError):
            return ("the repository is gated; accept its licence on its hub page with your account, then log in "
                    "here (hf auth login, or set HF_TOKEN)")
        if isinstance(cause, RevisionNotFoundError):
            return "no such revision there; check model.revision"
        if isinstance(cause, RepositoryNotFoundError):
            return ("no such repository, or it is private; check the id, or log in (hf auth login, or set "
                    "HF_TOKEN) with an account that can read it")
    return ("not in the local Hugging Face cache and the hub is unreachable or the id is wrong; download it "
            "first (hf download ID) or set model.path to a local diffusers folder")


def load_pipeline(source: ModelSource, model_cfg: Any, dtype: torch.dtype) -> Any:
    """from_pretrained with safetensors only and no remote code; hub failures become one clear line."""
    from diffusers import DiffusionPipeline

    kwargs: dict = {"dtype": dtype, "use_safetensors": True}
    if model_cfg.revision:
        kwargs["revision"] = model_cfg.revision
    if model_cfg.variant:
        kwargs["variant"] = model_cfg.variant
    try:
        pipe = DiffusionPipeline.from_pretrained(source.location, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        if source.is_local:
            raise ModelLoadError(f"could not load {source.location}: {str(exc).splitlines()[0]}") from exc
        raise ModelLoadError(f"could not load hub model {source.location}: {hub_failure_reason(exc)}") from exc
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval().requires_grad_(False)
    return pipe


def vae_factor_of(vae_config: dict) -> Optional[int]:
    """The VAE's spatial downscale from its config, as diffusers' pipelines compute vae_scale_factor."""
    if isinstance(vae_config.get("temperal_downsample"), list):  # QwenImage's VAE (diffusers' spelling)
        return 2 ** len(vae_config["temperal_downsample"])
    for key in ("encoder_block_out_channels", "block_out_channels"):  # AutoencoderDC (Sana), AutoencoderKL
        channels = vae_config.get(key)
        if isinstance(channels, list) and channels:
            return 2 ** (len(channels) - 1)
    return None


def _component_config(folder: Path, component: str) -> dict:
    try:
        data = json.loads((folder / component / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # unreadable here: the family's defaults stand in, and load says what is wrong
    return data if isinstance(data, dict) else {}


def planned_component_config(source: ModelSource, component: str) -> dict:
    """A component's config.json known before load: read from the model's folder when it is local, else {}
    (a hub id not downloaded yet: checks that need it run again once loaded)."""
    return _component_config(Path(source.location), component) if source.is_local else {}


def planned_size_factor(source: ModelSource) -> int:
    """The size factor known before load: from the folder's VAE and denoiser configs when it is local,
    else the family's (its released models' VAE and patch size)."""
    family = FAMILIES[source.family]
    if not source.is_local:
        return family.size_factor()
    folder = Path(source.location)
    patch = _component_config(folder, family.denoiser).get("patch_size")
    return family.size_factor(vae_factor_of(_component_config(folder, "vae")),
                              patch if isinstance(patch, int) and patch > 0 else None)


def loaded_size_factor(pipe: Any, family: str) -> int:
    """The same factor from the loaded pipeline (what its own input checks use)."""
    denoiser = getattr(pipe, FAMILIES[family].denoiser, None)
    patch = getattr(getattr(denoiser, "config", None), "patch_size", None)
    vae_factor = getattr(pipe, "vae_scale_factor", None)
    return FAMILIES[family].size_factor(vae_factor if isinstance(vae_factor, int) else None,
                                        patch if isinstance(patch, int) and patch > 0 else None)


def size_problem(factor: int, height: int, width: int) -> Optional[str]:
    """The refusal for a size that is not a multiple of `factor` (None: the size fits)."""
    bad = [f"{name}={value}" for name, value in (("height", height), ("width", width)) if value % factor]
    if not bad:
        return None
    return (f"{', '.join(bad)}: this pipeline needs height and width that are multiples of {factor}; e.g. "
            f"height={max(factor, height - height % factor)} width={max(factor, width - width % factor)}")


def check_size(pipe: Any, family: str, height: int, width: int) -> None:
    """After load, in case the loaded pipeline disagrees with its configs as read before load."""
    problem = size_problem(loaded_size_factor(pipe, family), height, width)
    if problem:
        raise ConfigError(problem)
