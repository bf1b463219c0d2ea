"""Re-evaluate the reproducibility table's rows from their kept checkpoints.

    python scripts/verify_rows.py experiments [--only vae_mnist/dynamic_k5000 ...] \\
        [--out outputs/verify] [--dry-run] [--set key=value ...]

Run from the repository root. For every row whose checkpoint is on this machine with
the row's recorded digest, the number is computed again in a fresh process and compared
with the table's value (the kept ``metrics*.csv`` the table reads):

- test-pass metrics with ``eval.py ckpt_path=<checkpoint>`` (the run's own config; a
  VAE's ``model.iwae_samples`` kept at the run's value, since the row's number came from
  the run's own test pass);
- re-scored samples (``test/fid_inception``, ``test/parzen_loglik``, ...) with
  ``scripts/score_samples.py`` at the sample count the row's scores file records.

Validation numbers of unfinished runs are listed as such. Each row's result is written
to ``--out`` as one JSON, so a pass that was cut off continues where it stopped; the
summary table is printed at the end (exit 1 if a number differs).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from genlab.report.reproduction import _run_of, checkpoint_path, file_digest, find_rows
from genlab.report.runs import Run, find_runs

SCORED = ("test/fid", "test/kid", "test/prec", "test/recall", "test/dens", "test/cov")
SCORED += ("test/parzen",)  # score_samples.py's numbers, not eval.py's test pass


def row_name(top: Path, folder: Path, row: dict) -> str:
    base = folder.relative_to(top).as_posix() if folder != top else folder.name
    return f"{base}/{row['run']}" if row.get("run") else base


def inside(path: Path, folders: list[Path]) -> bool:
    return any(path.resolve().is_relative_to(f.resolve()) for f in folders)


def agrees(table: float, again: float, se: float | None) -> bool:
    """Equal up to float noise: 1e-4 relative, or a tenth of the row's standard error."""
    tol = max(1e-4 * max(1.0, abs(table)), 0.1 * se if se and math.isfinite(se) else 0.0)
    return abs(table - again) <= tol


def command(ckpt: Path, run: Run, folder: Path, row: dict, out: Path) -> list[str]:
    """The process that computes the row's number again (its metrics land under ``out``)."""
    metric = row["metric"]
    if not metric.startswith(SCORED):
        k = (run.config.get("model") or {}).get("iwae_samples")
        keep_k = [f"model.iwae_samples={k}"] if isinstance(k, int) else []
        return [sys.executable, "eval.py", f"ckpt_path={ckpt}", *keep_k]
    scores = sorted(folder.glob(f"scores_{row.get('run') or ''}*.json"))
    n = json.loads(scores[0].read_text()).get("n", 2000) if scores else 2000
    features = ["--features", "inception"] if "inception" in metric else ["--features"]
    features += ["--parzen"] if "parzen" in metric else []
    run_dir = ckpt.parent.parent
    return [sys.executable, "scripts/score_samples.py", str(run_dir), *features] + [
        "--n",
        str(n),
        "--ckpt",
        ckpt.stem,
        "--names",
        "row",
        "--out",
        str(out),
    ]


def metrics_of(cmd: list[str], ckpt: Path, out: Path) -> dict[str, Any]:
    """The metrics the process wrote: eval.py's metrics.json, or score_samples' scores."""
    if "eval.py" in cmd:
        return json.loads((ckpt.parent / f"eval_{ckpt.stem}" / "metrics.json").read_text())[
            "metrics"
        ]
    return json.loads((out / "scores_row.json").read_text())["scores"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", type=Path, help="experiment folders (e.g. experiments)")
    p.add_argument("--only", nargs="*", default=[], help="row names (folder or folder/run)")
    p.add_argument("--out", type=Path, default=Path("outputs/verify"))
    p.add_argument("--dry-run", action="store_true", help="list what would run")
    p.add_argument(
        "--set", nargs="*", default=[], help="eval.py overrides for every row (paths.data_dir=...)"
    )
    args = p.parse_args()
    runs = find_runs(args.paths, [])
    args.out.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, ...], dict[str, Any]] = {}  # one process per checkpoint and tool
    results = []
    for top, folder, row in find_rows(args.paths):
        name, metric = row_name(top, folder, row), row["metric"]
        if args.only and name not in args.only and name.split("/")[0] not in args.only:
            continue
        record = args.out / (re.sub(r"[^\w.-]", "_", f"{name}__{metric}") + ".json")
        if record.is_file():
            results.append(json.loads(record.read_text()))
            continue
        run = _run_of(runs, top, folder, str(row.get("run") or ""))
        table = run.last(metric) if run else None
        out: dict[str, Any] = {"row": name, "metric": metric, "table": table, "eval": None}
        ckpt = checkpoint_path(folder, row["checkpoint"]) if row.get("checkpoint") else None
        if metric.startswith("val/"):
            out["verdict"] = "a validation number (the run goes on)"
        elif run is None or ckpt is None or not ckpt.is_file():
            out["verdict"] = "no checkpoint here"
        elif row.get("sha256") and file_digest(ckpt) != str(row["sha256"])[:12]:
            out["verdict"] = "checkpoint digest differs from the row's"
        else:
            with tempfile.TemporaryDirectory() as tmp:
                cmd = command(ckpt, run, folder, row, Path(tmp))
                cmd += args.set if "eval.py" in cmd else []
                key = tuple(c for c in cmd if not c.startswith(tmp))
                out["command"] = " ".join(key[1:])
                if args.dry_run:
                    out["verdict"] = "would run"
                    results.append(out)
                    continue
                if key not in done:
                    evals = ckpt.parent / f"eval_{ckpt.stem}"
                    new = not evals.exists()
                    proc = subprocess.run(cmd, capture_output=True, text=True)
                    try:
                        done[key] = metrics_of(cmd, ckpt, Path(tmp))
                    except (OSError, ValueError, KeyError):
                        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                        done[key] = {"error": tail[0]}
                    if new and evals.exists() and inside(ckpt, args.paths):
                        shutil.rmtree(evals)  # a committed checkpoint: leave the tree clean
            again = done[key].get(metric)
            out["eval"] = again
            if "error" in done[key]:
                out["verdict"] = f"failed: {done[key]['error']}"
            elif again is None or table is None:
                out["verdict"] = "metric missing"
            else:
                se = run.last(f"{metric}_se")
                out["verdict"] = "agrees" if agrees(table, again, se) else "DIFFERS"
            record.write_text(json.dumps(out, indent=2) + "\n")
        results.append(out)
        print(json.dumps(out), flush=True)
    print("\n| row | metric | table | again | verdict |\n|---|---|---:|---:|---|")
    for r in results:
        cells = [f"{v:.6g}" if isinstance(v, float) else "" for v in (r["table"], r["eval"])]
        print(f"| {r['row']} | `{r['metric']}` | {cells[0]} | {cells[1]} | {r['verdict']} |")
    sys.exit(1 if any(r["verdict"] == "DIFFERS" for r in results) else 0)


if __name__ == "__main__":
    main()
