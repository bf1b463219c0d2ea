"""Keep a finished run in an experiment folder, the way ``genlab-report`` reads kept runs.

    python scripts/keep_run.py outputs/<run> experiments/<folder> [--tag NAME] \\
        [--eval checkpoints/eval_exact/metrics.json ...]

Copies the run's ``.hydra/config.yaml`` to ``config[_NAME].yaml`` and its
``csv/metrics.csv`` to ``metrics[_NAME].csv``; each ``--eval`` record (``eval.py``'s
``metrics.json``, relative to the run folder or absolute) is appended to the CSV as one
more row of ``test/...`` values (a later record wins where two name the same metric), so
the kept folder shows what the evaluation measured. Prints the SHA-256 (12 digits) of the
run's ``checkpoints/best.ckpt`` (else ``last.ckpt``) for a ``reproduction.yaml`` row's
``sha256``, and the run's training hours (its logged epoch times).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

from genlab.report.reproduction import file_digest


def keep(run: Path, folder: Path, tag: str = "", evals: list[Path] | None = None) -> dict:
    """Copy ``run`` into ``folder`` (see the module docstring); returns what was kept."""
    suffix = f"_{tag}" if tag else ""
    for need in (run / ".hydra" / "config.yaml", run / "csv" / "metrics.csv"):
        if not need.is_file():
            raise ValueError(f"{run} is not a genlab run folder with a CSV log (no {need})")
    records = []
    for path in evals or []:
        path = path if path.is_absolute() else run / path
        try:
            records.append(json.loads(path.read_text())["metrics"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"--eval {path}: not an eval.py metrics.json") from None
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / ".hydra" / "config.yaml", folder / f"config{suffix}.yaml")
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    extra: dict[str, str] = {}
    for record in records:
        extra.update({k: str(v) for k, v in record.items()})
    if extra:
        last = rows[-1] if rows else {}
        rows.append({"epoch": last.get("epoch", ""), "step": last.get("step", ""), **extra})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(folder / f"metrics{suffix}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt = ckpt if ckpt.is_file() else run / "checkpoints" / "last.ckpt"
    seconds = sum(float(r[k]) for r in rows for k in ("time/epoch_s", "time/val_s") if r.get(k))
    return {
        "config": str(folder / f"config{suffix}.yaml"),
        "metrics": str(folder / f"metrics{suffix}.csv"),
        "checkpoint": str(ckpt) if ckpt.is_file() else None,
        "sha256": file_digest(ckpt) if ckpt.is_file() else None,
        "train_hours": round(seconds / 3600, 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("folder", type=Path)
    p.add_argument("--tag", default="", help="config_<tag>.yaml / metrics_<tag>.csv")
    p.add_argument("--eval", type=Path, nargs="*", default=[], help="eval.py metrics.json")
    args = p.parse_args()
    try:
        print(json.dumps(keep(args.run, args.folder, args.tag, args.eval), indent=2))
    except ValueError as e:
        print(f"keep_run.py: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
