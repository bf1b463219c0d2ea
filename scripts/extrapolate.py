"""How many epochs a run would need to reach a paper's number: fit its validation curve
with y = a + b t^(-c) (``genlab.report.extrapolate``) and read off the asymptote and the
epoch that reaches the target, with the CPU hours at the run's own epoch time.

    python scripts/extrapolate.py outputs/<run> --metric val/loglik --target -86.34 \\
        --out experiments/<folder>/extrapolation_<name>

Writes ``<out>.json`` (the fit, the asymptote, epochs and hours to the target, or why it
is out of reach) and ``<out>.png`` (the curve, the fit, its extension and the target;
needs matplotlib). RUN is a run folder (``csv/metrics.csv``) or a metrics CSV.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from genlab.report.extrapolate import fit_power_law, to_target


def read_curve(path: Path, metric: str) -> tuple[list[float], list[float], float | None]:
    """(epochs, values, mean seconds per epoch) of ``metric`` in a run's metrics CSV."""
    path = path / "csv" / "metrics.csv" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"no metrics CSV at {path}: give a run folder or its metrics.csv")
    by_epoch: dict[float, float] = {}
    seconds: dict[float, float] = {}
    with open(path) as f:
        reader = csv.DictReader(f)
        columns = [c for c in reader.fieldnames or [] if c.startswith(("val/", "test/"))]
        for row in reader:
            e = float(row["epoch"]) if row.get("epoch") else None
            if e is None:
                continue
            if row.get(metric):
                by_epoch[e] = float(row[metric])  # the last value logged in the epoch
            for k in ("time/epoch_s", "time/val_s"):
                if row.get(k):
                    seconds[e] = seconds.get(e, 0.0) + float(row[k])
    epochs = sorted(by_epoch)
    if not epochs:
        raise ValueError(f"{path} logs no {metric} (its columns: {', '.join(columns)})")
    per_epoch = sum(seconds.values()) / len(seconds) if seconds else None
    return epochs, [by_epoch[e] for e in epochs], per_epoch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--metric", required=True)
    p.add_argument("--target", type=float, required=True, help="the paper's value")
    p.add_argument("--skip", type=float, default=0.25, help="share of the curve not fitted")
    p.add_argument("--out", type=Path, required=True, help="path stem of the .json / .png")
    args = p.parse_args()
    try:
        epochs, values, per_epoch = read_curve(args.run, args.metric)
        fit = to_target(fit_power_law(epochs, values, args.skip), args.target)
    except ValueError as e:
        print(f"extrapolate.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    record = {"run": str(args.run), "metric": args.metric, **fit.as_dict()}
    record["seconds_per_epoch"] = per_epoch
    if fit.epochs_to_target is not None and per_epoch:
        more = max(fit.epochs_to_target - fit.last_epoch, 0.0)
        record["more_epochs"] = more
        record["more_hours"] = more * per_epoch / 3600
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError:
        return
    end = max(fit.last_epoch * 4, (fit.epochs_to_target or 0) * 1.2, fit.last_epoch + 10)
    t = np.linspace(fit.first_epoch, end, 400)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, values, ".", label=f"{args.metric} (logged)")
    ax.plot(t, fit.predict(t + 1), "-", label=f"fit a + b t^-c (a = {fit.a:.4g}, c = {fit.c:.2f})")
    ax.axhline(args.target, color="k", ls="--", lw=1, label=f"target {args.target:g}")
    ax.axvline(fit.last_epoch, color="grey", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(args.metric)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
