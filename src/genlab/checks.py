"""Typed checks of every setting a user can write, before anything is built or trained.

Constructor signatures are the schema: each family, data module and callback annotates
its arguments with the types below (``PositiveInt``, ``Literal[...]`` for choices, ...),
and :func:`check_config` walks every ``_target_`` node of the composed config against
the signature of the class it names. A bad value stops the run with one line naming
the key the user wrote (an interpolation's source, e.g. ``metrics.n_test``), what is
wrong and what to write instead. The same annotations check direct Python construction
(:func:`check_args`). Third-party classes (Lightning's ``Trainer`` and
``ModelCheckpoint``) get their ranges from :data:`RANGES`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from genlab.errors import ConfigError
from genlab.trust import check_trusted, untrusted

# ---- the vocabulary ------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``gt``/``ge`` below, ``lt``/``le`` above (None: unbounded)."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def ok(self, v: float) -> bool:
        return (
            (self.gt is None or v > self.gt)
            and (self.ge is None or v >= self.ge)
            and (self.lt is None or v < self.lt)
            and (self.le is None or v <= self.le)
        )

    def adjective(self) -> str | None:
        """'positive' / 'non-negative' where one word says it."""
        return {(0, None, None, None): "positive", (None, 0, None, None): "non-negative"}.get(
            (self.gt, self.ge, self.lt, self.le)
        )

    def words(self) -> str:
        """The bounds as text: '>= -1', '>= 0 and < 1'."""
        parts = []
        if self.gt is not None or self.ge is not None:
            parts.append(f"{'>' if self.gt is not None else '>='} {_num(self.gt, self.ge)}")
        if self.lt is not None or self.le is not None:
            parts.append(f"{'<' if self.lt is not None else '<='} {_num(self.lt, self.le)}")
        return " and ".join(parts)


def _num(a: float | None, b: float | None) -> str:
    v = a if a is not None else b
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Check:
    """A custom test: ``fn(value)`` returns None when fine, else what is wrong."""

    fn: Callable[[Any], str | None]


PositiveInt = Annotated[int, Range(gt=0)]
NonNegativeInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegativeFloat = Annotated[float, Range(ge=0)]
UnitInterval = Annotated[float, Range(ge=0, le=1)]
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # what seed_everything accepts


def _torch_optimizer(name: Any) -> str | None:
    import torch

    cls = getattr(torch.optim, str(name), None)
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer):
        return None
    return "is not a torch.optim optimiser: use e.g. Adam, AdamW, SGD, RMSprop"


def _torch_activation(name: Any) -> str | None:
    from torch import nn

    cls = getattr(nn, str(name), None)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return None
    return "is not a torch.nn class: use e.g. ReLU, LeakyReLU, ELU, SiLU"


def _accelerator(name: Any) -> str | None:
    from lightning.pytorch.accelerators import AcceleratorRegistry

    known = ["auto", "gpu", *AcceleratorRegistry.available_accelerators()]
    return None if name in known else f"is not one of {'|'.join(dict.fromkeys(known))}"


def _devices(value: Any) -> str | None:
    """Lightning's devices: a count, a list of indices, 'auto', -1, or '0,1'."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if value in ("auto", "-1") or (parts and all(p.isdigit() for p in parts)):
            return None
    count = isinstance(value, int) and not isinstance(value, bool) and (value > 0 or value == -1)
    indices = isinstance(value, list) and value and all(isinstance(v, int) for v in value)
    if count or (indices and min(value) >= 0):
        return None
    return "is not a device count, a list of device indices, auto or -1"


OptimizerName = Annotated[str, Check(_torch_optimizer)]
ActivationName = Annotated[str, Check(_torch_activation)]


@dataclass(frozen=True)
class Spec:
    """A dict naming a class in ``key`` (e.g. a net spec's ``arch``) whose other entries
    are that class's arguments: checked against its signature, recursively."""

    key: str
    default: str


NetSpec = Annotated[dict, Spec("arch", "genlab.nn.MLP")]


# ---- checking one value ---------------------------------------------------------------


class _Bad(Exception):
    """A value that does not fit its annotation: ``what`` it should be, or (``said``)
    the whole complaint."""

    def __init__(self, what: str, example: Any = None, said: bool = False) -> None:
        super().__init__(what)
        self.what, self.example, self.said = what, example, said


def _describe(tp: Any) -> str:
    """How an annotation reads in an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, *extra = args
        ranges = [m for m in extra if isinstance(m, Range)]
        noun = {int: "integer", float: "number"}.get(base)
        if not ranges or noun is None:
            return _describe(base)
        adjective = ranges[0].adjective()
        if adjective:
            return f"a {adjective} {noun}"
        return f"{'an' if noun == 'integer' else 'a'} {noun} {ranges[0].words()}"
    if origin is Literal:
        return "one of " + "|".join(dict.fromkeys("null" if a is None else str(a) for a in args))
    if origin in (Union, types.UnionType):
        parts = [a for a in args if a is not type(None)]
        if all(typing.get_origin(a) is Literal for a in parts):  # one set of choices
            choices = list(dict.fromkeys(c for a in parts for c in typing.get_args(a)))
            return _describe(Literal[tuple(choices)]) + (
                " or null" if len(parts) < len(args) else ""
            )
        texts = list(dict.fromkeys(_describe(a) for a in parts))
        return " or ".join(texts) + (" or null" if len(parts) < len(args) else "")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"a list of {_plural(_describe(inner[0]))}" if inner else "a list"
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        dict: "a mapping",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _plural(text: str) -> str:
    for article in ("a ", "an "):
        if text.startswith(article):
            text = text[len(article) :]
            return text if text.endswith("s") else text + "s"
    return text


def check_value(value: Any, tp: Any) -> None:
    """Raise :class:`_Bad` unless ``value`` fits the annotation ``tp``."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, *extra = args
        check_value(value, base)
        for m in extra:
            if isinstance(m, Range) and isinstance(value, (int, float)) and not m.ok(value):
                raise _Bad(_describe(tp))
            if isinstance(m, Check) and (problem := m.fn(value)):
                raise _Bad(problem, said=True)
            if isinstance(m, Spec) and value is not None:
                _check_spec(value, m)
        return
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise _Bad(_describe(tp), next((a for a in args if a is not None), None))
        return
    if origin in (Union, types.UnionType):
        problems = []
        for a in args:
            try:
                check_value(value, a)
                return
            except _Bad as e:
                problems.append(e)
            except _SpecError:
                raise
        # A wrong value of the right kind (a string outside a Literal) says why, unless
        # the union is one set of choices.
        kinds = [p for a, p in zip(args, problems, strict=True) if _kind_fits(value, a)]
        if len(kinds) == 1 and not _is_choice(tp):
            raise kinds[0]
        raise _Bad(_describe(tp), next((p.example for p in problems if p.example), None))
    if origin in (list, tuple, Sequence, typing.Sequence) or tp in (list, tuple):
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
            raise _Bad(_describe(tp))
        inner = [a for a in args if a is not Ellipsis]
        if origin is tuple and len(args) > 1 and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise _Bad(f"a list of {len(args)} values")
            for v, a in zip(value, args, strict=True):
                check_value(v, a)
            return
        for v in value:
            try:
                check_value(v, inner[0] if inner else Any)
            except _Bad:
                raise _Bad(_describe(tp)) from None
        return
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise _Bad(_describe(tp))
        return
    if tp is bool:
        if not isinstance(value, bool):
            raise _Bad("true or false")
        return
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad("an integer")
        return
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Bad("a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise _Bad("a finite number")
        return
    if tp is str:
        if not isinstance(value, str):
            raise _Bad("a string")
        return
    if tp is type(None):
        if value is not None:
            raise _Bad("null")
        return
    if isinstance(tp, type):
        # Other classes (Lightning's Accelerator, timedelta, ...) can't come from YAML:
        # a plain value never fits them, so a union decides with its other members.
        if not isinstance(value, tp):
            raise _Bad(_describe(tp))
        return


def _kind_fits(value: Any, tp: Any) -> bool:
    """Whether ``value`` has the base kind of ``tp`` (e.g. a str for a Literal of strs)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        return _kind_fits(value, args[0])
    if origin is Literal:
        return any(type(value) is type(a) for a in args)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    if origin in (list, tuple, Sequence):
        return isinstance(value, Sequence) and not isinstance(value, str)
    return False


class _SpecError(Exception):
    """A bad entry inside a nested spec: (sub-key, message)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def _check_spec(value: Any, spec: Spec) -> None:
    if not isinstance(value, Mapping):
        raise _Bad("a mapping")
    path = value.get(spec.key, spec.default)
    reason = untrusted(path)
    if reason:
        raise _SpecError(spec.key, reason)
    try:
        cls = import_target(str(path))
    except ConfigError:
        raise _SpecError(spec.key, f"{path!r} cannot be imported") from None
    args = {k: v for k, v in value.items() if k != spec.key}
    problem = _first_problem(cls, args, exclude=())
    if problem:
        raise _SpecError(*problem)


# ---- signatures -----------------------------------------------------------------------


def import_target(path: str) -> Any:
    """The object an import path (``pkg.module.Name``) names; ConfigError if none (or,
    inside ``genlab.trust.only_trusted``, if it lies outside the trusted packages)."""
    check_trusted(path, "_target_")
    module, _, name = str(path).rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{path!r} cannot be imported") from None


@functools.cache
def signature_of(cls: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """(parameters, type hints, takes **kwargs) of a class's constructor (or a function),
    merging the ``__init__``s up the class hierarchy that ``**kwargs`` forwards to."""
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    var_kw = False
    targets = (
        [c.__init__ for c in inspect.getmro(cls) if "__init__" in vars(c)]
        if (isinstance(cls, type))
        else [cls]
    )
    for fn in targets:
        if fn is object.__init__:
            break
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            break
        for name, p in sig.parameters.items():
            if name == "self" or p.kind == p.VAR_POSITIONAL:
                continue
            if p.kind == p.VAR_KEYWORD:
                continue
            params.setdefault(name, p)
            if name not in hints:
                hints[name] = _hint(fn, name, p)
        kinds = {p.kind for p in sig.parameters.values()}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            break  # this __init__ does not forward to its parent's
        if not isinstance(cls, type) or not _forwards(fn):
            var_kw = True
            break
    return params, hints, var_kw


def _forwards(fn: Any) -> bool:
    """Whether an ``__init__(…, **kwargs)`` passes its kwargs to ``super().__init__``
    (genlab's own classes do; a third-party one may keep them)."""
    return getattr(fn, "__module__", "").startswith("genlab.")


def _hint(fn: Any, name: str, p: inspect.Parameter) -> Any:
    try:
        return typing.get_type_hints(fn, include_extras=True).get(name, Any)
    except Exception:  # noqa: BLE001 - forward references a library only imports for type checkers
        ann = p.annotation
        if isinstance(ann, str):
            try:
                glb = getattr(fn, "__globals__", {})
                return eval(ann, glb, {"Literal": Literal, "Union": Union})  # noqa: S307
            except Exception:  # noqa: BLE001
                return Any
        return Any if ann is inspect.Parameter.empty else ann


def _example(p: inspect.Parameter | None, tp: Any, bad: _Bad) -> Any:
    if bad.example is not None:
        return bad.example
    if p is not None and p.default is not inspect.Parameter.empty and p.default is not None:
        try:
            check_value(p.default, tp)
            return p.default
        except (_Bad, _SpecError):
            pass
    return None


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return str(v)


def _first_problem(
    cls: Any, values: Mapping[str, Any], exclude: Sequence[str]
) -> tuple[str, str] | None:
    """(key, message) of the first value that does not fit ``cls``'s signature."""
    params, hints, var_kw = signature_of(cls)
    for key, value in values.items():
        if key in exclude or (isinstance(key, str) and key.startswith("_")):
            continue
        p = params.get(key)
        if p is None:
            if var_kw:
                continue
            near = difflib.get_close_matches(str(key), list(params), n=1)
            hint = f": did you mean {near[0]}?" if near else f"; its settings: {', '.join(params)}"
            return key, f"is not a setting of {_name(cls)}{hint}"
        if isinstance(value, Mapping) and "_target_" in value:
            continue  # a nested object (trainer.strategy): checked as a node of its own
        tp = _override(cls, key, hints.get(key, Any))
        try:
            check_value(value, tp)
        except _SpecError as e:
            return f"{key}.{e.key}", e.message
        except _Bad as bad:
            got = f"{value!r}" + (f" ({type(value).__name__})" if isinstance(value, str) else "")
            example = None if bad.said else _example(p, tp, bad)
            msg = f"must be {bad.what}, got {got}"
            if bad.said or (_is_choice(tp) and isinstance(value, str)):
                msg = f"={value!r} {bad.what if bad.said else f'is not {bad.what}'}"
            return key, msg + (
                f": write e.g. {{key}}={_fmt(example)}" if example is not None else ""
            )
    return None


def _is_choice(tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_is_choice(a) for a in args)
    return origin is Literal


def _name(cls: Any) -> str:
    return getattr(cls, "__qualname__", str(cls))


# Ranges and choices for third-party classes, on top of their own type hints.
RANGES: dict[str, dict[str, Any]] = {
    "lightning.pytorch.trainer.trainer.Trainer": {
        "max_epochs": Annotated[int, Range(ge=-1)] | None,
        "min_epochs": NonNegativeInt | None,
        "max_steps": Annotated[int, Range(ge=-1)],
        "min_steps": NonNegativeInt | None,
        "log_every_n_steps": NonNegativeInt | None,
        "check_val_every_n_epoch": PositiveInt | None,
        "num_sanity_val_steps": Annotated[int, Range(ge=-1)] | None,
        "accumulate_grad_batches": PositiveInt,
        "gradient_clip_val": NonNegativeFloat | None,
        "gradient_clip_algorithm": Literal["norm", "value"] | None,
        "limit_train_batches": NonNegativeInt | UnitInterval | None,
        "limit_val_batches": NonNegativeInt | UnitInterval | None,
        "limit_test_batches": NonNegativeInt | UnitInterval | None,
        "limit_predict_batches": NonNegativeInt | UnitInterval | None,
        "val_check_interval": PositiveInt | Annotated[float, Range(gt=0, le=1)] | None,
        "fast_dev_run": bool | PositiveInt,
        "num_nodes": PositiveInt,
        "deterministic": bool | Literal["warn"] | None,
        "max_time": str | Mapping | None,
        "accelerator": Annotated[str, Check(_accelerator)],
        "devices": Annotated[Any, Check(_devices)],
    },
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint": {
        "mode": Literal["min", "max"],
        "save_top_k": Annotated[int, Range(ge=-1)],
        "every_n_epochs": NonNegativeInt | None,
        "every_n_train_steps": NonNegativeInt | None,
        "save_last": bool | Literal["link"] | None,
    },
}


def _override(cls: Any, key: str, tp: Any) -> Any:
    for klass in inspect.getmro(cls) if isinstance(cls, type) else [cls]:
        table = RANGES.get(f"{klass.__module__}.{klass.__qualname__}")
        if table and key in table:
            return table[key]
    return tp


def check_args(cls: type, values: Mapping[str, Any], owner: str) -> None:
    """Check constructor arguments against ``cls``'s annotations (direct Python use);
    ``owner`` is the config prefix to name, e.g. ``"model"``."""
    problem = _first_problem(cls, {k: v for k, v in values.items() if k != "self"}, exclude=())
    if problem:
        key, msg = problem
        raise ConfigError(_line(f"{owner}.{key}", msg))


def _line(path: str, msg: str) -> str:
    msg = msg.replace("{key}", path)
    return f"{path}{msg}" if msg.startswith("=") else f"{path} {msg}"


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


# ---- this machine ----------------------------------------------------------------------


def check_accelerator(accelerator: str) -> None:
    """A GPU (or MPS) asked for by name must be there."""
    import torch

    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible here: use "
            "trainer=cpu, or trainer.accelerator=auto (a GPU when there is one)"
        )
    if accelerator == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps but MPS is not available: use trainer=cpu")


# ---- folders --------------------------------------------------------------------------


def check_writable(path: str | Path, setting: str) -> None:
    """Create ``path`` if needed and check that files can be written there."""
    p = Path(path).expanduser()
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".genlab-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigError(
            f"{setting}={str(path)!r} is not a writable folder ({reason}): "
            f"choose another one ({setting}=<folder>)"
        ) from None
