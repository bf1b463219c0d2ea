"""Typed checks of every setting a user can write, before anything is built or trained.

Constructor signatures are the schema: each family, data module and callback annotates
its arguments with the vocabulary of :mod:`genlab.checks.types` (``PositiveInt``,
``Literal[...]`` for choices, ``NetSpec``, ...); :mod:`genlab.checks.signatures` reads
signatures and checks arguments (:func:`check_args` for direct Python construction);
:func:`check_config` (:mod:`genlab.checks.config`) walks every ``_target_`` node of a
composed config; :mod:`genlab.checks.system` checks the machine and its folders. A bad
value stops the run with one line naming the key the user wrote, what is wrong and what
to write instead.
"""

from genlab.checks.config import (
    METRICS,
    PASSED_BY_TRAIN,
    RUNNER_KEYS,
    SELECTION,
    TOP_LEVEL,
    check_config,
    raw_value,
)
from genlab.checks.signatures import RANGES, check_args, check_value, import_target, signature_of
from genlab.checks.system import check_accelerator, check_writable
from genlab.checks.types import (
    ActivationName,
    Betas,
    Check,
    Decay,
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    Range,
    Seed,
    Spec,
    UnitInterval,
)

__all__ = [
    "METRICS",
    "PASSED_BY_TRAIN",
    "RANGES",
    "RUNNER_KEYS",
    "SELECTION",
    "TOP_LEVEL",
    "ActivationName",
    "Betas",
    "Check",
    "Decay",
    "NetSpec",
    "NonNegativeFloat",
    "NonNegativeInt",
    "OptimizerName",
    "PositiveFloat",
    "PositiveInt",
    "Range",
    "Seed",
    "Spec",
    "UnitInterval",
    "check_accelerator",
    "check_args",
    "check_config",
    "check_value",
    "check_writable",
    "import_target",
    "raw_value",
    "signature_of",
]
