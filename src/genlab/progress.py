"""Progress of long test-time computations (AIS, ODE likelihoods, samples for the scores,
Inception features, feature-network training) as log lines with an estimate of the
time left.

Log lines, not a live bar: they work beside Lightning's progress bar, in Hydra's run log,
under SLURM and in CI logs alike. Nothing is printed for work that ends within
``first_after`` seconds; after that a line every ``every`` seconds and one at the end.
Only the process of global rank 0 speaks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

log = logging.getLogger("genlab.progress")
T = TypeVar("T")
FIRST_AFTER = 5.0  # seconds of silence before the first line
EVERY = 20.0  # seconds between lines


def _rank_zero() -> bool:
    """Whether this process is global rank 0 (Lightning's record of it when Lightning is
    loaded, else the launcher's environment), without importing Lightning."""
    module = sys.modules.get("lightning.fabric.utilities.rank_zero")
    rank = getattr(getattr(module, "rank_zero_only", None), "rank", None)
    if rank is None:
        rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)) or 0)
    return rank == 0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """``with Progress("AIS log Z", total=14500, unit="temperatures") as p: ... p.update(k)``.

    Lines read ``AIS log Z: 3,500/14,500 temperatures (24%), 12 s, about 38 s left``.
    """

    def __init__(
        self,
        what: str,
        total: int,
        unit: str = "",
        first_after: float | None = None,
        every: float | None = None,
        logger: logging.Logger | None = None,
        percent_only: bool = False,
    ) -> None:
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.percent_only = percent_only  # "37% done" for work measured in fractions
        self.first_after = FIRST_AFTER if first_after is None else first_after
        self.every = EVERY if every is None else every
        self.log = logger or log
        self.done = 0
        self.spoke = False
        self.enabled = _rank_zero()
        self.start = self.last = time.perf_counter()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()

    def _count(self) -> str:
        if self.percent_only and self.total:
            return f"{100 * self.done / self.total:.0f}% done"
        unit = f" {self.unit}" if self.unit else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.done:,}/{self.total:,}{unit}{pct}"

    def update(self, n: int = 1) -> None:
        """``n`` more units done; logs when a line is due."""
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.start
        due = elapsed >= self.first_after and (not self.spoke or now - self.last >= self.every)
        if due and self.done < self.total:
            left = elapsed / max(self.done, 1) * (self.total - self.done)
            self.log.info(
                f"{self.what}: {self._count()}, {_duration(elapsed)}, about {_duration(left)} left"
            )
            self.spoke, self.last = True, now

    def finish(self) -> None:
        """A closing line with the time taken (only when progress lines were shown)."""
        if self.enabled and self.spoke:
            elapsed = time.perf_counter() - self.start
            self.log.info(f"{self.what}: {self._count()} in {_duration(elapsed)}")
            self.spoke = False


def track(
    items: Iterable[T], what: str, total: int, unit: str = "", step: int = 1, **kwargs
) -> Iterator[T]:
    """Yield ``items``, counting ``step`` units each (e.g. images per batch) towards
    ``total``; the last item may count fewer (``total`` caps the count)."""
    with Progress(what, total, unit, **kwargs) as p:
        for item in items:
            yield item
            p.update(min(step, p.total - p.done) if p.total else step)
