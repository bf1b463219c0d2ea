"""Plot metrics of runs' metrics.csv against epochs (needs matplotlib: pip install matplotlib).

    python scripts/plot_curves.py outputs/<run> \\
        --metrics curve/test_loglik val/loglik --out experiments/nice_mnist/loglik_curve.png
    python scripts/plot_curves.py dcgan=<run1>/csv/metrics.csv sngan=<run2>/csv/metrics.csv \\
        --metrics val/fid --logy --reference 182 --reference-label VAE --out fid.png

Several runs (``label=path``) share one plot; ``--reference`` (repeatable) draws
horizontal lines. Also prints the per-epoch values as a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

from genlab.errors import run_script


def read_curves(path: Path, metrics: list[str]) -> dict[str, dict[int, float]]:
    """metric -> {epoch: value} (the last value logged in each epoch) of a metrics CSV or
    a run folder's ``csv/metrics.csv``."""
    curves: dict[str, dict[int, float]] = defaultdict(dict)
    path = path / "csv" / "metrics.csv" if path.is_dir() else path
    with open(path) as f:
        for row in csv.DictReader(f):
            for m in metrics:
                if row.get(m):
                    curves[m][int(row["epoch"])] = float(row[m])
    return curves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("csv", nargs="+", help="metrics.csv files, optionally as label=path")
    ap.add_argument("--metrics", nargs="+", default=["curve/test_loglik", "val/loglik"])
    ap.add_argument("--reference", type=float, action="append", default=[],
                    help="a horizontal line, e.g. a paper's number (repeatable)")  # fmt: skip
    ap.add_argument("--reference-label", action="append", default=[])
    ap.add_argument("--logy", action="store_true", help="logarithmic y axis")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    runs = [(a.split("=", 1) if "=" in a else ("", a)) for a in args.csv]
    # (label, metric) -> {epoch: value}
    curves = {
        (label, m): c
        for label, path in runs
        for m, c in read_curves(Path(path), args.metrics).items()
    }
    names = {k: " ".join(p for p in k if p) if len(runs) > 1 else k[1] for k in curves}
    epochs = sorted(set().union(*(c.keys() for c in curves.values())))
    print("| epoch | " + " | ".join(names.values()) + " |")
    print("|---" * (len(curves) + 1) + "|")
    for e in epochs:
        vals = [f"{c[e]:.2f}" if e in c else "" for c in curves.values()]
        print(f"| {e + 1} | " + " | ".join(vals) + " |")
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for k, c in curves.items():
            xs = sorted(c)
            ax.plot([x + 1 for x in xs], [c[x] for x in xs], marker=".", label=names[k])
        labels = args.reference_label + ["paper"] * len(args.reference)
        for i, (ref, label) in enumerate(zip(args.reference, labels, strict=False)):
            ax.axhline(ref, ls="--", c=f"C{7 + i % 3}", label=label)
        if args.logy:
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_script(main, "plot_curves.py")
