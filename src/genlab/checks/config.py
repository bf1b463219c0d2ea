"""The walk over a composed train / eval config: every typed top-level, ``metrics.*`` and
selection setting, and every ``_target_`` node against the signature of the class it
names. A bad value stops the run with one line naming the key the user wrote (an
interpolation's source, e.g. ``metrics.n_test``), what is wrong and what to write.
"""

from __future__ import annotations

from typing import Any, Literal

from genlab.checks.signatures import _first_problem, _line, check_value, import_target
from genlab.checks.types import CompileMode, NonNegativeInt, PositiveInt, Seed, _Bad, _is_choice
from genlab.errors import ConfigError

# ---- the whole config -----------------------------------------------------------------

# Arguments train(cfg) passes itself, not from the config.
PASSED_BY_TRAIN = {
    "model": ("data_shape", "num_classes"),
    "trainer": ("callbacks", "logger", "plugins"),
}
# Keys of a model node that the runner reads (checkpoint selection), not the family.
RUNNER_KEYS = ("monitor", "monitor_mode")

TOP_LEVEL: dict[str, Any] = {
    "seed": Seed,
    "ckpt_path": str | None,
    "auto_resume": bool,
    "test": bool,
    "optimized_metric": str | None,
    "matmul_precision": Literal["highest", "high", "medium"] | None,
    "compile": bool,
    "compile_mode": CompileMode,
    "inner_steps": PositiveInt | None,
}
METRICS: dict[str, Any] = {
    "features": Literal["auto", "classifier", "autoencoder", "inception", "genlab"],
    "cache_dir": str,
    "every_n_epochs": NonNegativeInt,
    "n_val": PositiveInt | None,
    "n_test": PositiveInt,
    "probes": bool,
    "hsic": bool,
    "inception_weights": str | None,
}
SELECTION: dict[str, Any] = {"monitor": str | None, "monitor_mode": Literal["min", "max"]}


def check_config(cfg: Any) -> None:
    """Every typed setting of a composed train/eval config, before anything is built.

    Raises ConfigError with one line: the key the user writes, what is wrong, what to
    write instead.
    """
    from omegaconf import DictConfig

    if not isinstance(cfg, DictConfig) or "model" not in cfg or "data" not in cfg:
        raise ConfigError("the config has no model and data sections: is it a genlab config?")
    for key, tp in TOP_LEVEL.items():
        if key in cfg:
            _check_key(cfg, key, tp, key)
    for key, tp in METRICS.items():
        if "metrics" in cfg and key in cfg.metrics:
            _check_key(cfg.metrics, key, tp, f"metrics.{key}")
    for key, tp in SELECTION.items():
        if key in cfg.model:
            _check_key(cfg.model, key, tp, f"model.{key}")
    for path, node in _target_nodes(cfg):
        _check_node(node, path)


def _target_nodes(cfg: Any) -> list[tuple[str, Any]]:
    from omegaconf import DictConfig

    out = []
    for group in ("data", "model", "trainer"):
        node = cfg.get(group)
        if node is not None and not isinstance(node, DictConfig):
            raise ConfigError(f"{group}={node!r} is not a {group} config: choose one, {group}=...")
        if isinstance(node, DictConfig):
            if "_target_" not in node:
                raise ConfigError(f"{group} has no _target_: choose a {group} config ({group}=...)")
            out.append((group, node))
            strategy = node.get("strategy") if group == "trainer" else None
            if isinstance(strategy, DictConfig) and "_target_" in strategy:
                out.append(("trainer.strategy", strategy))
    for group in ("callbacks", "logger"):
        for key, node in (cfg.get(group) or {}).items():
            if node is not None and not isinstance(node, DictConfig):
                raise ConfigError(
                    f"{group}.{key}={node!r} is not a config with a _target_: remove it "
                    f"({group}.{key}=null) or give it one (+{group}.{key}._target_=<class>)"
                )
            if isinstance(node, DictConfig):
                if "_target_" not in node:
                    raise ConfigError(
                        f"{group}.{key} has no _target_: remove it ({group}.{key}=null) "
                        f"or name its class with +{group}.{key}._target_=<import path>"
                    )
                out.append((f"{group}.{key}", node))
    return out


def _resolved(node: Any, key: str, path: str) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        value = node[key]
    except MissingMandatoryValue:
        raise ConfigError(f"{path} is required (???): set {path}=<value>") from None
    except OmegaConfBaseException as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"{path} cannot be resolved: {first}") from None
    if OmegaConf.is_config(value):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{path} cannot be resolved: {str(e).splitlines()[0]}") from None
    return value


def raw_value(node: Any, key: str) -> Any:
    """A config value as written, interpolations unresolved (``${metrics.n_test}``)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=False).get(key)


def _source(node: Any, key: str, path: str) -> str:
    """The key the user writes: an interpolation's source (``${metrics.n_test}``)."""
    from omegaconf import OmegaConf

    if OmegaConf.is_interpolation(node, key):
        raw = str(raw_value(node, key))
        if raw.startswith("${") and raw.endswith("}") and ":" not in raw and raw.count("$") == 1:
            return raw[2:-1]
    return path


def _check_key(node: Any, key: str, tp: Any, path: str) -> None:
    value = _resolved(node, key, path)
    try:
        check_value(value, tp)
    except _Bad as bad:
        where = _source(node, key, path)
        got = f"{value!r}" + (f" ({type(value).__name__})" if isinstance(value, str) else "")
        if bad.said:
            raise ConfigError(f"{where}={value!r} {bad.what}") from None
        if _is_choice(tp) and isinstance(value, str):
            raise ConfigError(f"{where}={value!r} is not {bad.what}") from None
        raise ConfigError(f"{where} must be {bad.what}, got {got}") from None


def _check_node(node: Any, path: str) -> None:
    cls = import_target(node._target_) if "_target_" in node else None
    if cls is None:
        return
    group = path.split(".")[0]
    exclude = PASSED_BY_TRAIN.get(path, ()) + (RUNNER_KEYS if path == "model" else ())
    values = {}
    for key in node:
        if key in exclude or str(key).startswith("_"):
            continue
        values[key] = _resolved(node, key, f"{path}.{key}")
    problem = _first_problem(cls, values, exclude)
    if problem:
        key, msg = problem
        top = key.split(".")[0]
        where = _source(node, top, f"{path}.{top}") + key[len(top) :]
        raise ConfigError(_line(where, msg))
    del group
