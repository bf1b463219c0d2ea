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
``experiments/README.md`` overview is made this way).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- genlab-report:begin -->", "<!-- genlab-report:end -->"


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _score(v: float) -> str:
    """FID / KID: one decimal from 1 up (genlab's spaces), three digits below (Inception KID)."""
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


# Headline metrics, in this order: (name after "test/" or "val/", column, unit, format).
# A run shows each one it logged; which ones a family logs is in docs/models.md.
HEADLINES: list[tuple[str, str, str, Callable[[float], str]]] = [
    ("nll_iwae", "NLL (IWAE)", "nats", "{:.2f}".format),
    ("loglik", "log-lik.", "nats", "{:.2f}".format),
    ("elbo", "ELBO", "nats", "{:.2f}".format),
    ("bpd", "bits/dim", "", "{:.3f}".format),
    ("error_avg", "error", "", _pct),
    ("mse", "sq. error", "per image", "{:.2f}".format),
    ("cond_acc", "cond. acc.", "", _pct),
    ("recon_acc", "recon. acc.", "", _pct),
]
# FID / KID: the suffix of the score's name says its feature space (genlab.metrics.features).
SPACES = {"": "classifier", "_ae": "autoencoder", "_inception": "inception"}
# Precision / recall (k = 3), density / coverage (k = 5) in each feature space.
PRDC = [("precision", "prec."), ("recall", "recall"), ("density", "density"), ("coverage", "cov.")]
PROBES = [("linear_probe_acc", "linear probe"), ("knn_acc", "k-NN")]


@dataclass
class Run:
    """One run: where it is, its config (a plain dict) and its metric rows."""

    name: str
    folder: Path
    config: dict[str, Any]
    rows: list[dict[str, str]]
    config_note: str = ""
    images: list[Path] = field(default_factory=list)
    evaluated: dict[str, float] = field(default_factory=dict)

    # ---- what the rows say ----
    def column(self, key: str) -> list[tuple[float, float]]:
        """(epoch, value) of every row that logged ``key``."""
        out = []
        for r in self.rows:
            v = _number(r.get(key))
            if v is not None:
                out.append((_number(r.get("epoch")) or 0.0, v))
        return out

    def last(self, key: str) -> float | None:
        if key in self.evaluated:
            return self.evaluated[key]
        values = self.column(key)
        return values[-1][1] if values else None

    @property
    def split(self) -> str:
        """``test`` when the run was tested, else ``val`` (its last validation)."""
        return "test" if any(k.startswith("test/") for r in self.rows for k in r if r[k]) else "val"

    def metric(self, name: str) -> float | None:
        return self.last(f"{self.split}/{name}")

    @property
    def epochs(self) -> int | None:
        """Epochs trained: rows of training or validation metrics (the test pass logs with
        the epoch counter already past the last epoch)."""
        epochs = [
            _number(r.get("epoch"))
            for r in self.rows
            if any(v and k.startswith(("train/", "val/")) for k, v in r.items())
        ]
        epochs = [e for e in epochs if e is not None]
        return int(max(epochs)) + 1 if epochs else None

    @property
    def steps(self) -> int | None:
        steps = [v for _, v in self.column("step")]
        return int(max(steps)) + 1 if steps else None

    @property
    def minutes(self) -> float | None:
        times = [v for _, v in self.column("time/epoch_s")] + [
            v for _, v in self.column("time/val_s")
        ]
        return sum(times) / 60 if times else None

    # ---- what the config says ----
    @property
    def family(self) -> str:
        target = str((self.config.get("model") or {}).get("_target_", "?"))
        return target.rsplit(".", 1)[-1]

    @property
    def data(self) -> str:
        data = self.config.get("data") or {}
        name = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
        return f"{name} ({Path(str(data['path'])).name})" if data.get("path") else name


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# ---- finding runs ------------------------------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_yaml(path: Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _images(folder: Path, tag: str = "") -> list[Path]:
    """Sample grids of a run, the last epoch's last: ``samples*.png``, or for a tagged run
    ``samples_<tag>.png`` (else ``samples_<tag>_*.png``)."""
    if not tag:
        return sorted(folder.glob("samples*.png"))
    exact = folder / f"samples_{tag}.png"
    return [exact] if exact.is_file() else sorted(folder.glob(f"samples_{tag}_*.png"))


def find_runs(paths: Iterable[str | Path], skipped: list[Path] | None = None) -> list[Run]:
    """Every run under ``paths`` (see the module docstring), in path order; metrics files
    without a config are appended to ``skipped``."""
    runs: list[Run] = []
    skipped = skipped if skipped is not None else []
    for top in map(Path, paths):
        if not top.exists():
            raise FileNotFoundError(f"{top} does not exist")
        candidates = [top, *sorted(p for p in top.rglob("*") if p.is_dir())]
        for folder in candidates:
            if any(
                part.startswith(".") or part == "wandb" for part in folder.relative_to(top).parts
            ):
                continue
            try:
                runs += _runs_in(folder, top, skipped)
            except Exception as e:  # noqa: BLE001 - an unreadable config or CSV: say, go on
                first = str(e).splitlines()[0] if str(e) else ""
                print(
                    f"genlab-report: skipped {folder}: {type(e).__name__}: {first}", file=sys.stderr
                )
                skipped.append(folder)
    return runs


def _name(folder: Path, top: Path, tag: str = "") -> str:
    rel = folder.relative_to(top).as_posix() if folder != top else ""
    base = rel or top.resolve().name
    return f"{base}/{tag}" if tag else base


def _runs_in(folder: Path, top: Path, skipped: list[Path]) -> list[Run]:
    hydra_cfg = folder / ".hydra" / "config.yaml"
    if hydra_cfg.is_file() and (folder / "csv" / "metrics.csv").is_file():
        run = Run(
            _name(folder, top),
            folder,
            _read_yaml(hydra_cfg),
            _read_csv(folder / "csv" / "metrics.csv"),
            images=_images(folder / "images"),
        )
        for path in sorted(folder.glob("checkpoints/eval_*/metrics.json")):
            record = json.loads(path.read_text())
            run.evaluated.update({k: float(v) for k, v in record.get("metrics", {}).items()})
        return [run]
    out = []
    configs = {p.stem.removeprefix("config_"): p for p in folder.glob("config_*.yaml")}
    if (folder / "metrics.csv").is_file() and (folder / "config.yaml").is_file():
        out.append(
            Run(
                _name(folder, top),
                folder,
                _read_yaml(folder / "config.yaml"),
                _read_csv(folder / "metrics.csv"),
                images=_images(folder),
            )
        )
    for metrics in sorted(folder.glob("metrics_*.csv")):
        tag = metrics.stem.removeprefix("metrics_")
        prefixes = sorted((t for t in configs if tag.startswith(t)), key=len)
        cfg_path, note = (configs[prefixes[-1]], "") if prefixes else (folder / "config.yaml", "*")
        if not cfg_path.is_file():
            skipped.append(metrics)  # no config: not a run genlab can describe
            continue
        rows = _read_csv(metrics)
        if rows:
            config = _read_yaml(cfg_path)
            run = Run(_name(folder, top, tag), folder, config, rows, note, _images(folder, tag))
            out.append(run)
    return out


# ---- settings that differ from the family's defaults -------------------------------------
def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if str(k) != "_target_":
                out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


class Defaults:
    """The default model and data configs of each family / data set, composed once."""

    def __init__(self) -> None:
        from genlab.paths import config_dir

        self.conf = Path(config_dir())
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def _choice(self, group: str, target: str) -> str | None:
        for path in sorted((self.conf / group).glob("*.yaml")):
            try:
                if _read_yaml(path).get("_target_") == target:
                    return path.stem
            except Exception:  # noqa: BLE001 - a YAML that is not a plain node
                continue
        return None

    def of(self, run: Run) -> dict[str, Any]:
        model = str((run.config.get("model") or {}).get("_target_"))
        data = str((run.config.get("data") or {}).get("_target_"))
        key = (model, data)
        if key not in self.cache:
            self.cache[key] = self._compose(model, data)
        return self.cache[key]

    def _compose(self, model: str, data: str) -> dict[str, Any]:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf

        overrides = [
            f"{g}={c}" for g, t in (("model", model), ("data", data)) if (c := self._choice(g, t))
        ]
        if not any(o.startswith("model=") for o in overrides):
            return {}
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(self.conf), version_base="1.3"):
                cfg = compose("train", overrides=[*overrides, "data.path=."])
        except Exception:  # noqa: BLE001 - e.g. a data set without a `path`
            try:
                with initialize_config_dir(config_dir=str(self.conf), version_base="1.3"):
                    cfg = compose("train", overrides=overrides)
            except Exception:  # noqa: BLE001 - defaults unknown: no settings column
                return {}
        finally:
            GlobalHydra.instance().clear()
        node = OmegaConf.to_container(cfg, resolve=False)
        return {"model": _flat(node["model"]), "data": _flat(node["data"])}


# Keys that say where and how the run ran, not what it trained.
_NOT_SETTINGS = ("data_dir", "download", "eval_batch_size", "shuffle_seed", "path", "monitor")


def settings(run: Run, defaults: Defaults, limit: int = 8) -> str:
    """The run's model (and data) settings that differ from its family's defaults."""
    base = defaults.of(run)
    if not base:
        return ""
    changed = []
    for group in ("model", "data"):
        mine = _flat(run.config.get(group) or {})
        # Another network class (model/net=conv): name it, not each of its settings.
        arch = mine.get("net.arch")
        other_net = group == "model" and arch is not None and base[group].get("net.arch") != arch
        if other_net:
            changed.append(f"net={str(arch).rsplit('.', 1)[-1]}")
        for k, v in mine.items():
            if k.split(".")[0] in _NOT_SETTINGS or base[group].get(k, object()) == v:
                continue
            if other_net and k.startswith("net."):
                continue
            name = k if group == "model" else f"data.{k}"
            changed.append(f"{name}={_short(v)}")
    extra = f" (+{len(changed) - limit})" if len(changed) > limit else ""
    return ", ".join(changed[:limit]) + extra


def _short(v: Any) -> str:
    if isinstance(v, list):
        if len(v) > 3 and len(set(map(str, v))) == 1:
            return f"[{v[0]}]x{len(v)}"
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


# ---- the table ---------------------------------------------------------------------------
def table(
    runs: Sequence[Run], link: Callable[[Run], str] | None = None
) -> tuple[list[str], list[list[str]], list[dict[str, Any]]]:
    """Header, Markdown cells and CSV records of the comparison (columns that no run has
    are left out)."""
    defaults = Defaults()
    heads = [h for h in HEADLINES if any(r.metric(h[0]) is not None for r in runs)]
    spaces = [s for s in SPACES if any(r.metric(f"fid{s}") is not None for r in runs)]
    prdc = {s for s in spaces if any(r.metric(f"precision{s}") is not None for r in runs)}
    probes = [p for p in PROBES if any(r.metric(p[0]) is not None for r in runs)]
    header = ["run", "family", "data", "settings", "epochs", "time (min)", "split"]
    header += [f"{label} ({unit})" if unit else label for _, label, unit, _ in heads]
    for s in spaces:
        header += [f"FID ({SPACES[s]} features)", f"KID ({SPACES[s]})"]
        if s in prdc:
            header += [f"{label} ({SPACES[s]})" for _, label in PRDC]
    header += [label for _, label in probes]
    cells, records = [], []
    for run in runs:
        name = f"[{run.name}]({link(run)})" if link else run.name
        row = [
            name,
            run.family,
            run.data,
            settings(run, defaults) + run.config_note,
            str(run.epochs or ""),
            f"{run.minutes:.1f}" if run.minutes else "",
            run.split,
        ]
        record: dict[str, Any] = {
            "run": run.name,
            "family": run.family,
            "data": run.data,
            "settings": settings(run, defaults),
            "epochs": run.epochs,
            "steps": run.steps,
            "seconds": round(60 * run.minutes, 1) if run.minutes else None,
            "split": run.split,
        }
        for key, _, _, fmt in heads:
            v = run.metric(key)
            row.append(fmt(v) if v is not None else "")
            record[f"{run.split}/{key}" if v is not None else key] = v
        for s in spaces:
            fid, kid = run.metric(f"fid{s}"), run.metric(f"kid{s}")
            row += [_score(fid) if fid is not None else "", _score(kid) if kid is not None else ""]
            record[f"fid{s}"], record[f"kid{s}"] = fid, kid
            if s in prdc:
                for key, _ in PRDC:
                    v = run.metric(f"{key}{s}")
                    row.append(f"{v:.3f}" if v is not None else "")
                    record[f"{key}{s}"] = v
        for key, _ in probes:
            v = run.metric(key)
            row.append(_pct(v) if v is not None else "")
            record[key] = v
        cells.append(row)
        records.append(record)
    return header, cells, records


def markdown(header: list[str], cells: list[list[str]], skipped: Sequence[Path], base: Path) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells]
    if skipped:
        names = [os.path.relpath(p, base) for p in skipped]
        lines += ["", f"Not in the table (no config, or unreadable): {', '.join(names)}."]
    return "\n".join(lines) + "\n"


NOTES = (
    "Numbers are the test split's (`split`: val where a run was not tested: its last "
    "validation); NLL, log-likelihood and ELBO in nats per image, bits/dim for flows and "
    "diffusion, errors and accuracies in percent. FID / KID / precision / recall / density / "
    "coverage are comparable only within one feature space and one data set (genlab's "
    "feature networks are trained per data set; Inception is the space papers use). "
    "`settings`: what the run changed from its family's defaults (`*`: the folder's "
    "config, shared by its runs). "
    "Generated by `genlab-report`; do not edit by hand.\n"
)


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
    return records


def write_block(path: Path, text: str) -> None:
    """Replace what lies between the report markers of ``path`` (append them if missing)."""
    old = path.read_text() if path.is_file() else ""
    block = f"{BEGIN}\n{text}{END}"
    if BEGIN in old and END in old:
        new = old[: old.index(BEGIN)] + block + old[old.index(END) + len(END) :]
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
    args = parser.parse_args(argv)
    try:
        records = report(args.paths, args.out, args.readme, plots=not args.no_plots)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"genlab-report: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"{len(records)} runs -> {Path(args.out) / 'report.md'}, report.csv")


if __name__ == "__main__":
    main()
