"""The reproducibility table: for each kept experiment whose folder has a
``reproduction.yaml``, one row per reproduced result beside the paper's number.

A ``reproduction.yaml`` is a list of rows::

    - run: cgan_mnist             # the metrics_<tag>.csv of this folder ("" or absent: metrics.csv)
      metric: test/nll_iwae        # the logged metric compared
      protocol: IWAE bound, k = 5000; MNIST test split; best val -ELBO checkpoint
      paper: 86.76                 # the paper's value in the metric's logged units (0.0113: 1.13%)
      source: Burda et al. 2015, Table 1
      differs: k = 1000 (paper 5000); 120 of the paper's 3280 epochs   # optional
      cpu_hours: 0.3               # optional (else the run's wall-clock hours)
      commit: 0a1b2c3              # optional
      command: python train.py experiment=vae_mnist    # optional
      binarisation: dynamic (a fresh Bernoulli draw per batch)  # optional: how the data were
                                  # binarised, where the config does not say (static /
                                  # threshold runs are named from data.binarize)
      curve: extrapolation_vae.png    # optional: a figure of the row's learning curve (and its
                                  # extrapolation to the paper's number, scripts/extrapolate.py)
      checkpoint: <run>/checkpoints/best.ckpt  # optional: the checkpoint behind the row
      sha256: 0a1b2c3d4e5f            # optional: its digest, recorded when the row was written

genlab's value is read from the run's own metrics (the CSV log, or ``eval.py``'s
``metrics.json`` over it), never typed by hand. A row's ``checkpoint`` (relative to the
folder, or absolute) is listed with the first 12 hex digits of its SHA-256, so a reader
can check that ``genlab-eval ckpt_path=<it>`` evaluates the very weights of the row.
Checkpoints of long runs stay in their run folders (outside git): a row records the
digest as ``sha256``, so the table is the same on a clone without the file, and where
the file is present its digest is checked against the record (a mismatch is shown).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from genlab.report.columns import HEADLINES, PROBES, _pct
from genlab.report.runs import Run

FILE = "reproduction.yaml"
REQUIRED = ("metric", "protocol", "paper", "source")
BEGIN = "<!-- genlab-report:reproduction:begin -->"
END = "<!-- genlab-report:reproduction:end -->"
CSV = "metrics.csv"
HEADER = [
    "family",
    "data",
    "metric",
    "protocol",
    "paper",
    "source",
    "genlab",
    "differs from the paper",
    "epochs",
    "CPU-h",
    "commit",
    "command",
    "checkpoint (sha256)",
]


def find_rows(paths: Iterable[str | Path]) -> list[tuple[Path, Path, dict[str, Any]]]:
    """(top folder, experiment folder, row) of every ``reproduction.yaml`` under
    ``paths``; ValueError naming the file and the problem for a malformed one."""
    out = []
    for top in map(Path, paths):
        for f in sorted(top.rglob(FILE)) if top.is_dir() else []:
            try:
                rows = yaml.safe_load(f.read_text()) or []
            except yaml.YAMLError as e:
                raise ValueError(f"{f} is not valid YAML ({str(e).splitlines()[0]})") from None
            if not isinstance(rows, list):
                raise ValueError(f"{f} must be a list of rows (- metric: ..., paper: ...)")
            for i, row in enumerate(rows):
                missing = [k for k in REQUIRED if not isinstance(row, dict) or k not in row]
                if missing:
                    raise ValueError(f"{f}: row {i + 1} has no {', '.join(missing)}")
                out.append((top, f.parent, row))
    return out


def _run_of(runs: Sequence[Run], top: Path, folder: Path, tag: str) -> Run | None:
    rel = folder.relative_to(top).as_posix() if folder != top else top.resolve().name
    name = f"{rel}/{tag}" if tag else rel
    same = [r for r in runs if r.folder.resolve() == folder.resolve() and r.name == name]
    return same[0] if same else None


def _value(metric: str, v: float | None) -> str:
    """A value in the metric's format (the report's headline formats; percent for
    accuracies and error rates, logged as fractions)."""
    if v is None:
        return "(not logged)"
    name = metric.split("/", 1)[-1]
    formats = {h[0]: h[3] for h in HEADLINES}
    formats.update({k: _pct for k, _ in PROBES})
    # a variant takes its base metric's format: loglik_raise and parzen_loglik, loglik's
    parts = name.split("_")
    cuts = ["_".join(parts[:i]) for i in range(len(parts), 0, -1)]
    cuts += ["_".join(parts[i:]) for i in range(1, len(parts))]
    fmt = next((formats[c] for c in cuts if c in formats), "{:.4g}".format)
    return fmt(v)


def table(runs: Sequence[Run], rows: Sequence[tuple[Path, Path, dict[str, Any]]]) -> str:
    """The Markdown table, one line per row, by family (then folder, then file order)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    found = [
        (_run_of(runs, top, f, str(row.get("run") or "")), top, f, row) for top, f, row in rows
    ]
    found.sort(key=lambda t: t[0].family if t[0] else "~")  # stable: folder order within
    for run, top, folder, row in found:
        hours = row.get("cpu_hours")
        if hours is None and run is not None and run.minutes is not None:
            hours = f"{run.minutes / 60:.2f} (wall)"
        paper = row["paper"]
        cells = [
            run.family if run else "?",
            data_cell(run, row.get("binarisation")) if run else "?",
            f"`{row['metric']}`",
            str(row["protocol"]),
            _value(row["metric"], paper) if isinstance(paper, (int, float)) else str(paper),
            str(row["source"]),
            value_cell(run, row["metric"]) if run else f"(no run {row.get('run') or CSV})",
            differs_cell(top, folder, row),
            str(run.epochs if run and run.epochs is not None else ""),
            str(hours if hours is not None else ""),
            str(row.get("commit", "")),
            f"`{row['command']}`" if row.get("command") else "",
            checkpoint_cell(folder, row.get("checkpoint"), row.get("sha256")),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def value_cell(run: Run, metric: str) -> str:
    """genlab's value with the spread its run logged: ``± s.e.`` from ``<metric>_se``
    (what that error covers is the family's: see the row's protocol), and for an AIS
    log-likelihood (``<split>/loglik`` beside ``<split>/log_z`` and its ``_lo``/``_hi``)
    the bracket that log Z +- 3 standard errors of the mean AIS weight puts on it
    (loglik = -F - log Z moves against log Z)."""
    value = run.last(metric)
    text = _value(metric, value)
    if value is None:
        return text
    se = run.last(f"{metric}_se")
    if se is not None and math.isfinite(se):
        spread = _value(metric, se)
        # a significant-digit format gives the spread more decimals than the value
        # (49.66 ± 0.9005): round it to the value's decimals instead
        places = [len(t.partition(".")[2]) for t in (text, spread)]
        if "." in text and "%" not in text and places[1] > places[0]:
            spread = f"{se:.{places[0]}f}"
        text += f" ± {spread}"
    split, name = metric.split("/", 1) if "/" in metric else ("", metric)
    z, lo, hi = (run.last(f"{split}/log_z{s}") for s in ("", "_lo", "_hi"))
    if name == "loglik" and None not in (z, lo, hi):
        low, high = value - (hi - z), value + (z - lo)  # lo = -inf: no lower bound on w
        text += f" [{_value(metric, low)}, {_value(metric, high)}]"
    return text


def differs_cell(top: Path, folder: Path, row: dict[str, Any]) -> str:
    """What differs from the paper, with a link to the row's learning-curve figure
    (relative to the folder searched, where the README with the table lives)."""
    text = str(row.get("differs", ""))
    if row.get("curve"):
        rel = (folder / str(row["curve"])).relative_to(top).as_posix()
        text = f"{text} ([learning curve]({rel}))" if text else f"[learning curve]({rel})"
    return text


BINARISED = {
    "static": "static binarisation (one fixed Bernoulli draw, seeded)",
    "threshold": "thresholded at 128",
}


def data_cell(run: Run, binarisation: Any = None) -> str:
    """The data set and how it was binarised: from the run's ``data.binarize`` where set,
    else the row's ``binarisation`` text, else grey values."""
    how = BINARISED.get(str((run.config.get("data") or {}).get("binarize")))
    return f"{run.data}, {how or binarisation or 'grey values'}"


def families() -> list[str]:
    """Every family genlab ships: the class names of ``conf/model/*.yaml``'s targets."""
    from genlab.paths import config_dir

    names = set()
    for f in sorted((Path(config_dir()) / "model").glob("*.yaml")):
        target = (yaml.safe_load(f.read_text()) or {}).get("_target_")
        if isinstance(target, str):
            names.add(target.rsplit(".", 1)[-1])
    return sorted(names)


def missing_families(runs: Sequence[Run], rows: Sequence[tuple[Path, Path, dict]]) -> list[str]:
    """The families with no row in the table yet."""
    have = set()
    for top, folder, row in rows:
        run = _run_of(runs, top, folder, str(row.get("run") or ""))
        if run is not None:
            have.add(run.family)
    return [f for f in families() if f not in have]


def coverage_note(runs: Sequence[Run], rows: Sequence[tuple[Path, Path, dict]]) -> str:
    """One line under the table: the families that have no row yet (empty when none)."""
    missing = missing_families(runs, rows)
    return f"Families without a row in this table yet: {', '.join(missing)}.\n\n" if missing else ""


def file_digest(path: Path) -> str:
    """The first 12 hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def checkpoint_path(folder: Path, path: Any) -> Path:
    """Where a row's ``checkpoint`` lies: absolute as given, else relative to the
    experiment folder, else (run folders such as ``outputs/...``) to the working
    directory, the repository root where the table is made."""
    ckpt = Path(str(path)).expanduser()
    if ckpt.is_absolute():
        return ckpt
    here = folder / ckpt
    return ckpt if not here.is_file() and ckpt.is_file() else here


def checkpoint_cell(folder: Path, path: Any, recorded: Any = None) -> str:
    """``name (digest)`` of a row's checkpoint: the recorded digest where the row has one
    (checked against the file where the file is here), else the file's; "not kept" where
    neither is known."""
    if not path:
        return ""
    ckpt = checkpoint_path(folder, path)
    actual = file_digest(ckpt) if ckpt.is_file() else None
    if recorded:
        recorded = str(recorded)[:12]
        if actual is not None and actual != recorded:
            return f"{ckpt.name} ({recorded}; the file here is {actual}: not the row's weights)"
        return f"{ckpt.name} ({recorded})"
    return f"{ckpt.name} ({actual})" if actual else f"{ckpt.name}: not kept"


def check_checkpoints(rows: Sequence[tuple[Path, Path, dict[str, Any]]]) -> list[list[str]]:
    """One ``[row, status, checkpoint]`` line per table row: ``ok`` (the file is here and
    its digest is the recorded one), ``MISMATCH``, ``missing`` (recorded, not on this
    machine), ``unrecorded`` (a file without a recorded digest) or ``none`` (the row names
    no checkpoint)."""
    out = []
    for top, folder, row in rows:
        name = (folder.relative_to(top).as_posix() if folder != top else folder.name) + (
            f"/{row['run']}" if row.get("run") else ""
        )
        label = f"{name} {row['metric']}"
        path, recorded = row.get("checkpoint"), row.get("sha256")
        if not path:
            out.append([label, "none", ""])
            continue
        ckpt = checkpoint_path(folder, path)
        if not ckpt.is_file():
            out.append([label, "missing" if recorded else "none", str(path)])
            continue
        actual = file_digest(ckpt)
        if not recorded:
            status = f"unrecorded ({actual})"
        else:
            status = "ok" if actual == str(recorded)[:12] else f"MISMATCH (file {actual})"
        out.append([label, status, str(ckpt)])
    return out


NOTES = (
    "genlab's values are read from each run's own log (`genlab-eval`'s metrics.json where "
    "there is one), with the spread the run logged: `± s.e.` the standard error of a "
    "stochastic estimate (`<metric>_se`; the protocol says what it covers), `[lo, hi]` "
    "the bracket of an AIS log-likelihood from log Z +- 3 standard errors of the mean "
    "AIS weight; accuracies and error rates in percent, likelihoods in nats per image, "
    "bits/dim and squared errors as logged. `differs`: what of the paper's protocol or "
    "budget the run did not match. `CPU-h`: hours on the 2-core CPU; `(wall)` marks the sum "
    "of the run's logged epoch times (training and validation, not the test-time "
    "estimates), other values are the row's own count. Generated by `genlab-report` from "
    "the folders' `reproduction.yaml`; do not edit by hand.\n"
)
