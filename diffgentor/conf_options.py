"""What the command line may name, read from the config tree (conf/): group options, compile modes, model
entries and root defaults, never a second list kept here. Reads YAML only (no torch, no Hydra app)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from diffgentor.config import CONFIG_DIR


def group_options(group: str) -> list[str]:
    """The options of a config group (conf/<group>/*.yaml): sorted, `_private` ones then `none` last."""
    names = [p.stem for p in (CONFIG_DIR / group).glob("*.yaml")]
    return sorted(names, key=lambda n: (n == "none", n.startswith("_"), n))


def _raw_yaml(path: Path) -> dict:
    """A conf file's own keys, interpolations (`${dg.env:...}`) left unresolved."""
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def compile_modes() -> list[str]:
    """conf/compile options that fix a torch.compile mode (the option is named after its mode)."""
    return [name for name in group_options("compile")
            if _raw_yaml(CONFIG_DIR / "compile" / f"{name}.yaml").get("mode") == name]


def model_entries() -> dict[str, dict]:
    """conf/model entries by name, raw (name, path, testbed, family, ...)."""
    return {p.stem: _raw_yaml(p) for p in sorted((CONFIG_DIR / "model").glob("*.yaml"))}


def root_default(key: str) -> str:
    """A key's default in conf/config.yaml for --help (interpolations read as the model's value)."""
    root = root_raw()
    if key == "model":
        for item in root.get("defaults", []):
            if isinstance(item, dict) and "model" in item:
                return str(item["model"])
        return "?"
    raw = root.get(key)
    if isinstance(raw, str) and raw.startswith("${model."):
        return "the model entry's"
    return str(raw)


def root_raw() -> dict:
    """conf/config.yaml's own keys (hydra.* included), interpolations left unresolved."""
    return _raw_yaml(CONFIG_DIR / "config.yaml")
