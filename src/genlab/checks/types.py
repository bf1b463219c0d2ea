"""The vocabulary of typed settings and the check of one value against it.

Constructor signatures are genlab's schema: families, data modules and callbacks annotate
their arguments with these types (``PositiveInt``, ``Literal[...]`` for choices,
``NetSpec``, ...). :func:`check_value` raises ``_Bad`` with the words of the message
(what was expected, an example); ``genlab.checks.signatures`` turns it into one line.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union

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
Betas = tuple[NonNegativeFloat, NonNegativeFloat]  # Adam's (beta1, beta2)
# torch.compile's modes (genlab.compile)
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
Decay = Annotated[float, Range(ge=0, lt=1)]  # an EMA decay: 1 would never move


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


def _is_choice(tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_is_choice(a) for a in args)
    return origin is Literal
