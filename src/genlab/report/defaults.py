"""The settings a run changed from its family's defaults (the families' and data sets'
default configs, composed once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genlab.report.runs import Run, _read_yaml


# ---- settings that differ from the family's defaults -------------------------------------
def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if str(k) != "_target_":
                out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


class Defaults:
    """The default model and data configs of each family / data set, composed once."""

    def __init__(self) -> None:
        from genlab.paths import config_dir

        self.conf = Path(config_dir())
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def _choice(self, group: str, target: str) -> str | None:
        for path in sorted((self.conf / group).glob("*.yaml")):
            try:
                if _read_yaml(path).get("_target_") == target:
                    return path.stem
            except Exception:  # noqa: BLE001 - a YAML that is not a plain node
                continue
        return None

    def of(self, run: Run) -> dict[str, Any]:
        model = str((run.config.get("model") or {}).get("_target_"))
        data = str((run.config.get("data") or {}).get("_target_"))
        key = (model, data)
        if key not in self.cache:
            self.cache[key] = self._compose(model, data)
        return self.cache[key]

    def _compose(self, model: str, data: str) -> dict[str, Any]:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        overrides = [
            f"{g}={c}" for g, t in (("model", model), ("data", data)) if (c := self._choice(g, t))
        ]
        if not any(o.startswith("model=") for o in overrides):
            return {}
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(self.conf), version_base="1.3"):
                cfg = compose("train", overrides=[*overrides, "data.path=."])
        except Exception:  # noqa: BLE001 - e.g. a data set without a `path`
            try:
                with initialize_config_dir(config_dir=str(self.conf), version_base="1.3"):
                    cfg = compose("train", overrides=overrides)
            except Exception:  # noqa: BLE001 - defaults unknown: no settings column
                return {}
        finally:
            GlobalHydra.instance().clear()
        node = OmegaConf.to_container(cfg, resolve=False)
        return {"model": _flat(node["model"]), "data": _flat(node["data"])}


# Keys that say where and how the run ran, not what it trained.
_NOT_SETTINGS = ("data_dir", "download", "eval_batch_size", "shuffle_seed", "path", "monitor")


def settings(run: Run, defaults: Defaults, limit: int = 8) -> str:
    """The run's model (and data) settings that differ from its family's defaults."""
    base = defaults.of(run)
    if not base:
        return ""
    changed = []
    for group in ("model", "data"):
        mine = _flat(run.config.get(group) or {})
        # Another network class (model/net=conv): name it, not each of its settings.
        arch = mine.get("net.arch")
        other_net = group == "model" and arch is not None and base[group].get("net.arch") != arch
        if other_net:
            changed.append(f"net={str(arch).rsplit('.', 1)[-1]}")
        for k, v in mine.items():
            if k.split(".")[0] in _NOT_SETTINGS or base[group].get(k, object()) == v:
                continue
            if other_net and k.startswith("net."):
                continue
            name = k if group == "model" else f"data.{k}"
            changed.append(f"{name}={_short(v)}")
    extra = f" (+{len(changed) - limit})" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + extra


def _short(v: Any) -> str:
    if isinstance(v, list):
        if len(v) > 3 and len(set(map(str, v))) == 1:
            return f"[{v[0]}]x{len(v)}"
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)
