"""Plot metrics of a run's metrics.csv against epochs (needs matplotlib: pip install matplotlib).

    python scripts/plot_curves.py outputs/<run>/csv/metrics.csv \\
        --metrics curve/test_loglik val/loglik --out experiments/nice_mnist/loglik_curve.png

Also prints the per-epoch values as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path


def read_curves(path: Path, metrics: list[str]) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} (the last value logged in each epoch)."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    with open(path) as f:
        for row in csv.DictReader(f):
            for m in metrics:
                if row.get(m):
                    curves[m][int(row["epoch"])] = float(row[m])
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("csv", type=Path)
    ap.add_argument("--metrics", nargs="+", default=["curve/test_loglik", "val/loglik"])
    ap.add_argument("--reference", type=float, help="a horizontal line, e.g. a paper's number")
    ap.add_argument("--reference-label", default="paper")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    curves = read_curves(args.csv, args.metrics)
    epochs = sorted(set().union(*(c.keys() for c in curves.values())))
    print("| epoch | " + " | ".join(args.metrics) + " |")
    print("|---" * (len(args.metrics) + 1) + "|")
    for e in epochs:
        vals = [f"{curves[m][e]:.2f}" if e in curves[m] else "" for m in args.metrics]
        print(f"| {e + 1} | " + " | ".join(vals) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for m in args.metrics:
            xs = sorted(curves[m])
            ax.plot([x + 1 for x in xs], [curves[m][x] for x in xs], marker=".", label=m)
        if args.reference is not None:
            ax.axhline(args.reference, ls="--", c="gray", label=args.reference_label)
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
