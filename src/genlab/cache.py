"""Cache files that can't be mixed up or half-written: every file stores the key of what
it was built from and is checked against it on load; writes are atomic (a unique
temporary file, then a rename); builders take a lock so that parallel jobs (a multirun,
a SLURM array, DDP ranks) build a missing entry once while the others wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)


def tensor_digest(*tensors: Tensor) -> str:
    """SHA-256 of the tensors' shapes, dtypes and bytes (CPU copies): the identity of the
    data a cache entry was built from (MNIST's 50k training images: about 0.1 s)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype};".encode())
        h.update(t.view(torch.uint8).reshape(-1).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a unique temporary file beside ``path``, then rename it over
    ``path``: readers see the old file or the whole new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        from genlab.errors import is_write_error, write_failed

        if not is_write_error(e):
            raise
        raise write_failed("cache file", path, e) from None
    finally:
        tmp.unlink(missing_ok=True)


def read_keyed(path: Path, key: dict[str, Any], what: str) -> dict[str, Any] | None:
    """The record saved at ``path`` if its ``key`` entries equal ``key``'s; None (and a
    log line saying why, for a file that exists) when missing, unreadable or built from
    something else. Records are dicts written by :func:`write_atomic`."""
    if not path.is_file():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, overwritten or foreign files
        log.warning(f"{what} {path} is unreadable ({type(e).__name__}): rebuilding it")
        return None
    stored = record.get("key") if isinstance(record, dict) else None
    if stored != key:
        differs = (
            sorted(k for k in key if stored.get(k) != key[k]) if isinstance(stored, dict) else []
        )
        why = f"built from other {', '.join(differs)}" if differs else "no matching key"
        log.warning(f"{what} {path} does not fit this run ({why}): rebuilding it")
        return None
    return record


@contextlib.contextmanager
def file_lock(path: Path, what: str, timeout: float = 6 * 3600) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` while building ``path`` (POSIX ``flock``: the
    kernel frees it when its process dies). Says once that it waits for another job;
    where locks are unsupported it goes on without one (the write is atomic anyway)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, atomic writes only
        yield
        return
    lock = path.with_name(path.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        start, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.info(f"Waiting for another job that is building the {what} {path}")
                    told = True
                if time.monotonic() - start > timeout:
                    log.warning(f"Still locked after {timeout:.0f} s: building the {what} here")
                    break
                time.sleep(0.5)
            except OSError:  # file systems without flock (some network mounts)
                break
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(f, fcntl.LOCK_UN)
