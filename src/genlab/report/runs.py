"""Finding runs: training run folders (``.hydra/config.yaml`` + ``csv/metrics.csv``, an
``eval.py`` result on top) and kept experiments (``metrics[_<tag>].csv`` + ``config*.yaml``)."""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
