"""The command line as users run it: the README command, clear errors, W&B modes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import MODELS, REPO

from genlab.cli import unknown_option
from genlab.train import train


def _run(*args: str, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run(
        [sys.executable, "train.py", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_readme_run_command(tmp_path: Path) -> None:
    """`python train.py` (the README's run command) trains the default VAE on digits:
    the same command in its own process, 2 of its 30 epochs and a 50-sample IWAE
    (what it checks, the outputs and the closing lines, needs no more)."""
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[dev]" && python train.py' in readme
    run_dir = tmp_path / "run"
    p = _run(f"hydra.run.dir={run_dir}", "trainer.max_epochs=2", "model.iwae_samples=50")
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert f"Outputs in {run_dir}" in out and "test/nll_iwae=" in out
    # one device line; the end says the headline numbers and how to go on
    assert "Device: CPU" in out and "GPU available:" not in out
    assert "headline     test/nll_iwae=" in out
    assert f"evaluate:    genlab-eval ckpt_path={run_dir}" in out
    again = "genlab-train trainer.max_epochs=2 model.iwae_samples=50 ckpt_path="
    assert f"resume:      {again}{run_dir}/checkpoints/last.ckpt" in out
    assert f"compare:     genlab-report {run_dir} " in out
    for f in (
        ".hydra/config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "images/samples_epoch0001.png",
        "train.log",
    ):
        assert (run_dir / f).is_file(), f
    assert "Traceback" not in out


def test_bad_input_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    for args, msg in [
        (
            ["model=foo"],
            "genlab: error: unknown model option 'foo': choose one of " + ", ".join(MODELS),
        ),
        (["model.lr=-1"], "genlab: error: model.lr must be a positive number, got -1"),
    ]:
        p = _run(*args, f"hydra.run.dir={tmp_path}", "logger=none")
        assert p.returncode == 2
        assert p.stderr.strip().splitlines()[-1].startswith(msg), p.stderr
        assert "Traceback" not in p.stdout + p.stderr


@pytest.mark.parametrize(
    "script, args",
    [
        ("score_samples.py", ["{bad}", "--out", "{tmp}/o"]),
        ("sampling_cost.py", ["{bad}/best.ckpt", "default"]),
        ("plot_curves.py", ["{bad}", "--out", "{tmp}/p.png"]),
        ("representations.py", ["{bad}", "--out", "{tmp}/r"]),
        ("estimator_variance.py", ["{bad}/best.ckpt"]),
        ("keep_run.py", ["{bad}", "{tmp}/k"]),
        ("extrapolate.py", ["{bad}", "--metric", "val/loss", "--target", "1", "--out", "{tmp}/e"]),
    ],
)
def test_scripts_say_what_is_wrong_in_one_line(script, args, tmp_path, monkeypatch, capsys):
    """The scripts the docs name, given a folder that is not a run: one line on stderr
    that names it, exit code 2, no traceback."""
    import runpy

    bad = tmp_path / "not_a_run"
    argv = [a.format(bad=bad, tmp=tmp_path) for a in args]
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # (after any progress line)
    assert stop.value.code == 2 and "Traceback" not in err and "not_a_run" in last, err
    assert last.startswith((f"{script}: error: ", "genlab: error: ")), err


def test_unknown_option_check() -> None:
    conf = REPO / "conf"
    assert unknown_option(["model=vae", "data=mnist", "model/net=conv"], conf) is None
    assert (
        unknown_option(["logger=[csv,wandb]", "logger=none", "+experiment=vae_mnist"], conf) is None
    )
    assert "unknown data option 'mnsit'" in unknown_option(["data=mnsit"], conf)
    assert "unknown logger option 'x'" in unknown_option(["logger=[csv,x]"], conf)
    assert "unknown model option 'gann'" in unknown_option(["model=ae,gann"], conf)


def test_console_script_installed() -> None:
    exe = shutil.which("genlab-train", path=str(Path(sys.executable).parent))
    assert exe, "genlab-train is not installed next to this Python"
    p = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "== Configuration groups ==" in p.stdout


def test_wandb_offline_without_credentials(make_cfg, tmp_path: Path, monkeypatch) -> None:
    """No login and no WANDB_MODE: W&B logs offline (metrics, config, images), no crash."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = make_cfg(
        "logger=[wandb,csv]", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "test=false"
    )
    _, objs = train(cfg)
    wb = objs["trainer"].loggers[0]
    assert wb.mode == "offline"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].rglob("*.wandb"))
    assert list(runs[0].rglob("media/images/images/samples_*.png"))  # image grids reach W&B
    import wandb

    wandb.finish()


def test_wandb_falls_back_offline_when_online_start_fails(tmp_path, monkeypatch) -> None:
    import wandb

    from genlab.loggers import WandbLogger

    modes = []
    real_init = wandb.init

    def fake_init(**kwargs):
        modes.append(kwargs["mode"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("connection refused")
        return real_init(**{**kwargs, "mode": "disabled"})

    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setattr(wandb, "init", fake_init)
    lg = WandbLogger(save_dir=str(tmp_path))  # the run starts here
    assert modes == ["online", "offline"] and lg.mode == "offline"
    assert lg.experiment is not None
    lg.finish()
    monkeypatch.undo()


@pytest.mark.parametrize(
    ("env", "mode"),
    [({"WANDB_MODE": "disabled"}, "disabled"), ({"WANDB_MODE": "dryrun"}, "offline")],
)
def test_wandb_mode_from_environment(tmp_path, monkeypatch, env, mode) -> None:
    from genlab.loggers import WandbLogger

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert WandbLogger(save_dir=str(tmp_path)).mode == mode
