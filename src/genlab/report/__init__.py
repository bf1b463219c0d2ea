"""``genlab-report <runs, multirun or experiment folders...> --out <dir>``: one comparison
of many runs.

Finds runs under the given folders and writes ``report.md`` and ``report.csv`` (family,
data, the settings a run changed from its family's defaults, epochs, time, the headline
metrics in their units, FID / KID with their feature space, linear and k-NN probes) and,
with matplotlib, ``curves_<metric>.png`` (validation curves of a metric several runs
logged), ``fid.png`` (test FID per run and feature space) and ``samples.png`` (the runs'
last sample grids side by side).

What counts as a run:

- a training run's folder: ``.hydra/config.yaml`` and ``csv/metrics.csv`` (a multirun
  folder holds one per job); ``checkpoints/eval_*/metrics.json`` written by
  ``genlab-eval`` overrides its test numbers (the full evaluation);
- a kept experiment: ``metrics.csv`` with ``config.yaml``, or ``metrics_<tag>.csv`` with
  ``config_<tag>.yaml`` (the longest tag that starts ``<tag>``, else ``config.yaml``).

``--readme <file>`` also writes the table between the markers
``<!-- genlab-report:begin -->`` and ``<!-- genlab-report:end -->`` of that file (the
``experiments/README.md`` overview is made this way), and, when the folders hold
``reproduction.yaml`` files, the reproducibility table (each result beside its paper's,
:mod:`genlab.report.reproduction`) between ``<!-- genlab-report:reproduction:begin -->``
and ``<!-- genlab-report:reproduction:end -->``.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genlab.report import reproduction
from genlab.report.columns import HEADLINES, PRDC, PROBES, SPACES
from genlab.report.figures import figures
from genlab.report.runs import Run, find_runs
from genlab.report.tables import NOTES, markdown, table

BEGIN, END = "<!-- genlab-report:begin -->", "<!-- genlab-report:end -->"

__all__ = [
    "BEGIN",
    "END",
    "HEADLINES",
    "PRDC",
    "PROBES",
    "SPACES",
    "Run",
    "figures",
    "find_runs",
    "main",
    "report",
    "table",
    "write_block",
]


# ---- the command -------------------------------------------------------------------------
def report(
    paths: Sequence[str | Path],
    out: str | Path | None = None,
    readme: str | Path | None = None,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Write the comparison (report.md, report.csv, figures) into ``out`` and/or the table
    into ``readme``; return the CSV records."""
    skipped: list[Path] = []
    runs = find_runs(paths, skipped)
    if not runs:
        raise FileNotFoundError(
            f"no runs under {', '.join(map(str, paths))}: a run folder has .hydra/config.yaml "
            "and csv/metrics.csv (train.py with logger=csv, the default)"
        )
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        header, cells, records = table(runs, lambda r: os.path.relpath(r.folder, out))
        pictures = figures(runs, out) if plots else []
        body = [
            f"# genlab report: {len(runs)} runs\n",
            markdown(header, cells, skipped, out),
            NOTES,
        ]
        body += [f"\n![{p.stem}]({p.name})\n" for p in pictures]
        (out / "report.md").write_text("\n".join(body))
        keys = list(dict.fromkeys(k for r in records for k in r))
        with open(out / "report.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(records)
    if readme is not None:
        readme = Path(readme)
        header, cells, records = table(runs, lambda r: os.path.relpath(r.folder, readme.parent))
        write_block(readme, markdown(header, cells, skipped, readme.parent) + "\n" + NOTES)
        rows = reproduction.find_rows(paths)
        if rows:  # the reproducibility table, in its own block
            cover = reproduction.coverage_note(runs, rows)
            text = reproduction.table(runs, rows) + "\n" + cover + reproduction.NOTES
            write_block(readme, text, reproduction.BEGIN, reproduction.END)
    return records


def write_block(path: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` of ``path`` (append
    them if missing)."""
    old = path.read_text() if path.is_file() else ""
    block = f"{begin}\n{text}{end}"
    if begin in old and end in old:
        new = old[: old.index(begin)] + block + old[old.index(end) + len(end) :]
    else:
        new = (old.rstrip() + "\n\n" if old else "") + block + "\n"
    path.write_text(new)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="genlab-report",
        description="Compare genlab runs: one table (Markdown, CSV) and figures.",
    )
    parser.add_argument("paths", nargs="+", help="run, multirun or experiment folders")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--readme", help="also write the table between the markers of this file")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument(
        "--check-checkpoints",
        action="store_true",
        help="check the reproducibility rows' checkpoints against their recorded sha256 "
        "(run from the repository root) and exit 1 on a mismatch; writes nothing",
    )
    args = parser.parse_args(argv)
    if args.check_checkpoints:
        try:
            lines = reproduction.check_checkpoints(reproduction.find_rows(args.paths))
        except ValueError as e:
            print(f"genlab-report: error: {e}", file=sys.stderr)
            sys.exit(2)
        width = max((len(line[0]) for line in lines), default=0)
        for label, status, path in lines:
            print(f"{label:<{width}}  {status}  {path}".rstrip())
        counts = Counter(line[1].split(" ")[0] for line in lines)
        print(", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no rows")
        sys.exit(1 if counts["MISMATCH"] else 0)
    try:
        records = report(args.paths, args.out, args.readme, plots=not args.no_plots)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"genlab-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(records)} runs -> {Path(args.out) / 'report.md'}, report.csv")


if __name__ == "__main__":
    main()
