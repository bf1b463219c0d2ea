"""What a run folder or checkpoint from elsewhere may name, checked before any import.

A run's ``config.yaml`` names classes (``_target_``) and a checkpoint's hyper-parameters
name network factories (``net.arch``); importing a module runs its code, and Hydra calls
whatever a ``_target_`` names. Inside ``only_trusted()`` (``eval.py``,
``Family.load_from_checkpoint``) every such name must lie in genlab or in a package the
user trusts (``GENLAB_TRUSTED_PACKAGES=pkg1,pkg2`` or eval.py's ``trust=pkg1,pkg2``), or
be a class that genlab's own config folder names (Lightning's ``Trainer``, ...).
Training from one's own config is not restricted.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from genlab.errors import ConfigError
from genlab.paths import config_dir

TRUSTED_ENV = "GENLAB_TRUSTED_PACKAGES"
NAME_KEYS = ("_target_", "arch")  # config keys whose value is an import path

_allowed: ContextVar[tuple[str, ...] | None] = ContextVar("genlab_trusted", default=None)


def trusted_packages(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """genlab, then ``extra``, then the packages in ``$GENLAB_TRUSTED_PACKAGES``."""
    env = os.environ.get(TRUSTED_ENV, "").split(",")
    names = (str(n).strip() for n in ("genlab", *extra, *env))
    return tuple(dict.fromkeys(n for n in names if n))


@contextmanager
def only_trusted(extra: Iterable[str] = ()) -> Iterator[tuple[str, ...]]:
    """Within the block, ``check_trusted`` refuses names outside the trusted packages
    (those of an enclosing block stay trusted)."""
    outer = _allowed.get() or ()
    token = _allowed.set(tuple(dict.fromkeys((*trusted_packages(extra), *outer))))
    try:
        yield _allowed.get() or ()
    finally:
        _allowed.reset(token)


def restricted() -> bool:
    return _allowed.get() is not None


@functools.cache
def configured_targets(conf: str | None = None) -> frozenset[str]:
    """Every ``_target_`` / ``arch`` that the YAML files of genlab's config folder name."""
    root = conf or config_dir()
    pattern = re.compile(r"^\s*(?:_target_|arch):\s*([\w.]+)", re.MULTILINE)
    names: set[str] = set()
    for path in sorted(Path(root).rglob("*.yaml")):
        try:
            names.update(pattern.findall(path.read_text()))
        except (OSError, UnicodeDecodeError):
            continue
    return frozenset(names)


def untrusted(path: Any) -> str | None:
    """Why ``path`` may not be imported here (``"'x.y' lies outside ..."``), or None: a
    dotted name inside a trusted package, or anything outside ``only_trusted``."""
    allowed = _allowed.get()
    if allowed is None:
        return None
    text = str(path)
    parts = text.split(".")
    if not isinstance(path, str) or len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return f"{text!r} is not an import path (package.module.Class)"
    if any(p.startswith("__") for p in parts):
        return f"{text!r} names a private attribute: refused"
    if any(text.startswith(p + ".") for p in allowed) or text in configured_targets():
        return None
    return (
        f"{text!r} lies outside the trusted packages ({', '.join(allowed)}): a run folder "
        f"or checkpoint may only name their classes; if you trust {parts[0]!r}, add "
        f"trust={parts[0]} to eval.py (or {TRUSTED_ENV}={parts[0]})"
    )


def check_trusted(path: Any, where: str) -> None:
    """ConfigError ``<where>=<why>`` unless ``untrusted(path)`` is None. Nothing is
    imported."""
    reason = untrusted(path)
    if reason:
        raise ConfigError(f"{where}={reason}")


def named_paths(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every ``_target_`` / ``arch`` entry in plain nested
    dicts and lists (``OmegaConf.to_container(cfg, resolve=False)``: an interpolated
    name stays a ``${...}`` string and is refused)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key in NAME_KEYS:
                yield here, value
            else:
                yield from named_paths(value, here)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from named_paths(value, f"{where}[{i}]")


def check_names(node: Any, where: str = "") -> None:
    """``check_trusted`` on every import path a nested config names."""
    for key, value in named_paths(node, where):
        check_trusted(value, key)
