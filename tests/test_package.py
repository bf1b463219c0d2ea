"""The installed package: a wheel built from this checkout runs from another folder, finds
its configs, and takes a model family from a user's own config folder (hydra.searchpath)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO

EXAMPLE = REPO / "examples" / "custom_family"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout, installed (without its dependencies, which this env
    has) into a folder of its own; the editable checkout is not on its path."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy of the sources: setuptools' build/ folder stays out of the checkout.
    src = root / "src-copy"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(REPO / "src", src / "src", ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (root / "dist").glob("genlab-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "genlab/conf/train.yaml" in names and "genlab/conf/model/vae.yaml" in names
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(root / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    return root


def _run(installed: Path, args: list[str], cwd: Path, extra_path: str = "") -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "GENLAB_DATA": str(DATA_DIR)}
    env.pop("GENLAB_CONF", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(installed / "site"), extra_path) if p)
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_wheel_runs_from_another_folder(installed: Path, tmp_path: Path) -> None:
    site = installed / "site"
    where = _run(
        installed,
        [sys.executable, "-c", "import genlab.cli as c; print(c.__file__); print(c.config_dir())"],
        tmp_path,
    ).split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == site / "genlab" / "conf"
    job = _run(installed, [str(site / "bin" / "genlab-train"), "--cfg", "job"], tmp_path)
    assert "_target_: genlab.data.Digits" in job and "_target_: genlab.models.VAE" in job
    assert "Usage" in _run(installed, [sys.executable, "-m", "genlab", "--help"], tmp_path)
    assert "genlab-report" in _run(installed, [str(site / "bin" / "genlab-report"), "-h"], tmp_path)


def test_user_family_from_own_config_folder(installed: Path, tmp_path: Path) -> None:
    """A family defined outside genlab, added through hydra.searchpath, trains
    (fast_dev_run) from the installed console script."""
    user = tmp_path / "mine"
    shutil.copytree(EXAMPLE, user, ignore=shutil.ignore_patterns("__pycache__"))
    args = [
        str(installed / "site" / "bin" / "genlab-train"),
        "hydra.searchpath=[file://mine/conf]",
        "model=pixel_bernoulli",
        "trainer=cpu",
        "trainer.fast_dev_run=true",
        "logger=csv",
    ]
    out = _run(installed, args, tmp_path, extra_path=str(user))
    assert "test/nll=" in out
    (run,) = (tmp_path / "outputs").glob("*/*_pixel_bernoulli_digits")
    assert "_target_: pixel_models.PixelBernoulli" in (run / ".hydra" / "config.yaml").read_text()
