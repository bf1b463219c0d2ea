"""The report's figures (matplotlib, optional): shared validation curves, test FID per run
and feature space, the runs' last sample grids."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from genlab.report.columns import SPACES
from genlab.report.runs import Run


# ---- figures -----------------------------------------------------------------------------
def figures(runs: Sequence[Run], out: Path, max_curves: int = 6) -> list[Path]:
    """Validation curves shared by several runs, test FID per run, sample grids; [] without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("genlab-report: no matplotlib: tables only (pip install matplotlib)", file=sys.stderr)
        return []
    written = []
    counts: dict[str, int] = {}
    for run in runs:
        for key in {k for r in run.rows for k, v in r.items() if k.startswith("val/") and v}:
            counts[key] = counts.get(key, 0) + 1
    shared = sorted(
        (k for k, n in counts.items() if n >= 2 and k != "val/loss"), key=lambda k: (-counts[k], k)
    )
    for key in shared[:max_curves]:
        fig, ax = plt.subplots(figsize=(6, 4))
        for run in runs:
            points = run.column(key)
            if points:
                ax.plot(
                    [e + 1 for e, _ in points], [v for _, v in points], marker=".", label=run.name
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        path = out / f"curves_{key.replace('/', '_')}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    bars = [
        (r.name, s, r.metric(f"fid{s}"))
        for r in runs
        for s in SPACES
        if r.metric(f"fid{s}") is not None
    ]
    if bars:
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.2))
        ax.barh(range(len(bars)), [v for _, _, v in bars])
        ax.set_yticks(range(len(bars)), [f"{n} ({SPACES[s]})" for n, s, _ in bars], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("FID (lower is better; per feature space)")
        fig.tight_layout()
        fig.savefig(out / "fid.png", dpi=120)
        plt.close(fig)
        written.append(out / "fid.png")
    grids = [(r.name, r.images[-1]) for r in runs if r.images]
    if grids:
        n = len(grids)
        cols = min(n, 4)
        fig, axes = plt.subplots(
            math.ceil(n / cols), cols, figsize=(3 * cols, 3.2 * math.ceil(n / cols)), squeeze=False
        )
        for ax in axes.flat:
            ax.axis("off")
        for ax, (name, path) in zip(axes.flat, grids, strict=False):
            ax.imshow(plt.imread(path), cmap="gray")
            ax.set_title(name, fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "samples.png", dpi=120)
        plt.close(fig)
        written.append(out / "samples.png")
    return written
