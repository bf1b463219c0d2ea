"""Constructor signatures as the schema: the parameters and hints of a class (merged up
the ``**kwargs`` chain), the first bad argument with its one-line message, and
:func:`check_args` for direct Python construction. Third-party classes (Lightning's
``Trainer`` and ``ModelCheckpoint``) get their ranges from :data:`RANGES`.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union

from genlab.checks.types import (
    Check,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    Range,
    Spec,
    UnitInterval,
    _accelerator,
    _Bad,
    _describe,
    _devices,
    _is_choice,
)
from genlab.errors import ConfigError
from genlab.trust import check_trusted, untrusted

# ---- checking one value ---------------------------------------------------------------


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
