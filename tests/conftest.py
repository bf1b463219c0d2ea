"""Shared fixtures: compose the real configs (as `python train.py ...` would) into tmp dirs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

os.environ.setdefault("WANDB_MODE", "disabled")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the cores: one thread each (and in the runs they start), set
    # before torch is imported; tiny nets gain nothing from more.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    if "torch" in sys.modules:  # a plugin imported it first
        sys.modules["torch"].set_num_threads(1)
# Feature networks and real-feature caches go to one fresh folder per test session
# (never into the shared data sets; CI trains the MNIST network once per run).
os.environ.setdefault("GENLAB_CACHE", tempfile.mkdtemp(prefix="genlab-cache-"))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
DATA_DIR = Path(os.environ.get("GENLAB_DATA") or REPO.parent / "shared" / "datasets").resolve()
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
HAS_MNIST = (DATA_DIR / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()
if os.environ.get("GENLAB_REQUIRE_DATA") and not HAS_MNIST:
    raise RuntimeError(f"GENLAB_REQUIRE_DATA is set but {DATA_DIR} has no MNIST/raw files")
needs_mnist = pytest.mark.skipif(not HAS_MNIST, reason=f"no MNIST files under {DATA_DIR}")


def compose_cfg(overrides: list[str], output_dir: Path) -> DictConfig:
    """The config `python train.py <overrides>` would run, writing to output_dir."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} interpolations resolve
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.data_dir = str(DATA_DIR)
        if "download" in cfg.data:
            cfg.data.download = False  # tests never download
    return cfg


# Small, fast defaults for runs in tests; each test adds its own overrides.
FAST = ["trainer=cpu", "logger=csv", "trainer.enable_model_summary=false"]


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str, fast: bool = True, output_dir: Path | None = None) -> DictConfig:
        cfg = compose_cfg([*(FAST if fast else []), *overrides], output_dir or tmp_path)
        if fast and "iwae_samples" in cfg.model and not any("iwae" in o for o in overrides):
            cfg.model.iwae_samples = 16
        return cfg

    return make


def train_py(
    args: list[str], cwd: Path, wandb_mode: str = "disabled"
) -> subprocess.CompletedProcess:
    """``python <repo>/train.py <args>`` in ``cwd``, as a user runs it (own process)."""
    env = {**os.environ, "WANDB_MODE": wandb_mode, "WANDB_SILENT": "true"}
    # A W&B run started inside pytest leaves WANDB_SERVICE set: children would share that
    # service, and a killed child's run would stay registered there ("run ID in use").
    env.pop("WANDB_SERVICE", None)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's csv/metrics.csv (CSV logger)."""
    with open(Path(run_dir) / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))
