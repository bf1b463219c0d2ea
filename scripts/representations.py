"""Probe table: linear, 5-NN and MLP probe accuracy of every run that encodes.

    python scripts/representations.py RUN_DIR [RUN_DIR ...] --out experiments/representations

Each RUN_DIR is a genlab run folder (``checkpoints/best.ckpt``, else ``last.ckpt``, and
``.hydra/config.yaml``). The checkpoint is loaded without Hydra, its data set built from
the run's config, and ``genlab.metrics.scores.probe_scores`` (the code behind
``test/*_probe_acc``) fits the probes on the frozen codes of ``--n-train`` training
images (default: the whole training split) and scores them on the test split. Families
trained with labels (``uses_labels``: CVAE, VIB) are marked. Writes ``probes.md`` and
``probes.csv`` into ``--out``. Each run's row is also kept in ``<run>/probes.json`` and
reused while the checkpoint and ``--n-train`` are unchanged (``--force`` re-probes).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import torch

from genlab.checks import import_target
from genlab.errors import run_script
from genlab.evaluate import find_checkpoint, load_run_config
from genlab.metrics.scores import encode_all, probe_scores
from genlab.train import build


def epoch_times(run: Path) -> list[float]:
    """time/epoch_s of each epoch in the run's CSV log (empty without one)."""
    path = run / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        return [float(r["time/epoch_s"]) for r in csv.DictReader(f) if r.get("time/epoch_s")]


def probe_run(run: Path, n_train: int | None, force: bool = False) -> dict:
    """One row of the table for the run folder ``run``."""
    ckpt = find_checkpoint(run)
    cfg = load_run_config(ckpt, [])
    cls = import_target(cfg.model._target_)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    times = epoch_times(run)
    return {
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "family": cls.__name__ + (" (labels)" if getattr(cls, "uses_labels", False) else ""),
        "epochs_trained": len(times),
        "ckpt_epoch": int(saved.get("epoch", -1)) + 1,
        "train_min": round(sum(times) / 60, 1) if times else "",
        **cached_scores(run, ckpt, cfg, n_train, force),
        "run": str(run),
    }


def scores_of(ckpt: Path, cfg, n_train: int | None) -> dict:
    """code_dim, probe_train and the three probe accuracies (%) of one checkpoint."""
    dm = build(cfg.data, "data")
    dm.setup("test")
    cls = import_target(cfg.model._target_)
    model = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
    if not hasattr(model, "encode"):
        raise SystemExit(f"{ckpt}: {cls.__name__} has no encoder to probe")
    x_tr, y_tr = dm.splits["train"]
    n = x_tr.shape[0] if n_train is None else min(n_train, x_tr.shape[0])
    with torch.no_grad():
        scores = probe_scores(model, (x_tr[:n], y_tr[:n]), dm.splits["test"])
        code = encode_all(model, dm.splits["test"][0][:2]).shape[1]
    return {"code_dim": code, "probe_train": n, **{k: round(100 * v, 2) for k, v in scores.items()}}


def cached_scores(run: Path, ckpt: Path, cfg, n_train: int | None, force: bool) -> dict:
    """``scores_of``, reusing ``<run>/probes.json`` when it is for the same checkpoint
    (path and modification time) and probe training size."""
    key = {"checkpoint": str(ckpt.resolve()), "mtime": ckpt.stat().st_mtime, "n_train": n_train}
    cache = run / "probes.json"
    if cache.is_file() and not force:
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["scores"]
    scores = scores_of(ckpt, cfg, n_train)
    cache.write_text(json.dumps({"key": key, "scores": scores}, indent=2) + "\n")
    return scores


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with (out / "probes.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)
    cols = [k for k in keys if k != "run"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[k]) for k in cols) + " |" for r in rows]
    (out / "probes.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--out", type=Path, default=Path("probes"), help="output folder")
    p.add_argument("--n-train", type=int, default=None, help="probe training images (all)")
    p.add_argument("--force", action="store_true", help="re-probe runs with a cached row")
    args = p.parse_args(argv)
    rows = []
    for run in args.runs:
        print(f"probing {run} ...", file=sys.stderr)
        rows.append(probe_run(run, args.n_train, args.force))
    rows.sort(key=lambda r: (r["data"], "(labels)" in r["family"], -r["linear_probe_acc"]))
    write(rows, args.out)


if __name__ == "__main__":
    run_script(main, "representations.py")
