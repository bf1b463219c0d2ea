"""Errors that genlab reports as one line (what is wrong, what to do) instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterable


class GenlabError(Exception):
    """Base class: the command-line entry point prints these as a single line."""


class ConfigError(GenlabError, ValueError):
    """A configuration value is invalid or does not fit the data."""


class DataNotFoundError(GenlabError, FileNotFoundError):
    """Data files are missing and could not be downloaded."""


class DivergenceError(GenlabError, RuntimeError):
    """The loss became NaN or infinite during training."""


def require_positive(owner: str, **values: float | int | Iterable[int] | None) -> None:
    """Raise ConfigError unless every given value (or every item of a list) is > 0.

    ``owner`` is the config prefix the user would override, e.g. ``"model"``.
    """
    for name, value in values.items():
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if v is None or not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ConfigError(
                    f"{owner}.{name} must be a positive number, got {value!r}: "
                    f"set {owner}.{name}=<value > 0>"
                )


def require_choice(owner: str, name: str, value: object, choices: Iterable[object]) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        options = "|".join(str(c) for c in choices)
        raise ConfigError(f"{owner}.{name}={value!r} is not one of {options}")


def require_images(setting: str, data_shape: tuple[int, ...]) -> None:
    """Raise ConfigError unless the data are 8-bit images (C, H, W); ``setting`` names
    the choice that needs them, e.g. ``"model.likelihood=bernoulli"``."""
    if len(data_shape) != 3:
        raise ConfigError(
            f"{setting} needs image data (C, H, W), but the data have shape "
            f"{tuple(data_shape)}: choose a continuous likelihood / loss, or image data"
        )


class CheckpointError(GenlabError, RuntimeError):
    """A checkpoint is missing, unreadable, or belongs to another family or config."""
