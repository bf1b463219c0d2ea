"""W&B: checkpoints as model artifacts, runs under `wandb agent`, and the sweep example's
command lines (built by W&B's own code) parse as genlab command lines."""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import CONF, REPO

from genlab.cli import check_command_line
from genlab.loggers import WandbLogger

SWEEP = REPO / "examples" / "wandb_sweep" / "vae_mnist.yaml"


class FakeRun:
    """What the logger uses of a W&B run: its id, log_artifact."""

    id = "abc123"

    def __init__(self) -> None:
        self.logged: list[tuple[object, list[str]]] = []

    def log_artifact(self, artifact, aliases):
        self.logged.append((artifact, aliases))


def _checkpoints(tmp_path: Path) -> SimpleNamespace:
    for name in ("best", "last"):
        (tmp_path / f"{name}.ckpt").write_bytes(name.encode())
    return SimpleNamespace(
        best_model_path=str(tmp_path / "best.ckpt"),
        last_model_path=str(tmp_path / "last.ckpt"),
        best_model_score=torch.tensor(1.5),
        monitor="val/loss",
        mode="min",
    )


@pytest.mark.parametrize("when", [True, "all"])
def test_checkpoints_logged_as_model_artifacts(tmp_path, when) -> None:
    run = FakeRun()
    logger = WandbLogger(save_dir=str(tmp_path), experiment=run, log_model=when)
    callback = _checkpoints(tmp_path)
    logger.after_save_checkpoint(callback)
    assert len(run.logged) == (2 if when == "all" else 0)  # true: when training ends
    logger.finalize("success")
    assert [aliases for _, aliases in run.logged] == [["best"], ["last", "latest"]]
    artifact = run.logged[0][0]
    assert artifact.name == "model-abc123" and artifact.type == "model"
    assert artifact.metadata == {
        "file": "best.ckpt",
        "monitor": "val/loss",
        "mode": "min",
        "best_score": 1.5,
    }
    assert set(artifact.manifest.entries) == {"model.ckpt"}
    logger.finalize("success")  # nothing changed: nothing logged again
    assert len(run.logged) == 2
    time.sleep(0.01)
    (tmp_path / "best.ckpt").write_bytes(b"better")  # a new best
    logger.after_save_checkpoint(callback)
    logger.finalize("success")
    assert [aliases for _, aliases in run.logged[2:]] == [["best"]]


def test_no_artifacts_unless_asked_or_after_a_failure(tmp_path) -> None:
    run = FakeRun()
    logger = WandbLogger(save_dir=str(tmp_path), experiment=run)
    logger.after_save_checkpoint(_checkpoints(tmp_path))
    logger.finalize("success")
    failed = WandbLogger(save_dir=str(tmp_path), experiment=run, log_model=True)
    failed.after_save_checkpoint(_checkpoints(tmp_path))
    failed.finalize("failed")
    assert run.logged == []


def test_under_wandb_agent_the_agents_run_is_used(tmp_path, monkeypatch) -> None:
    seen = {}

    def start(self, init):
        seen.update(init)
        return FakeRun()

    monkeypatch.setattr(WandbLogger, "_start", start)
    monkeypatch.setenv("WANDB_SWEEP_ID", "s1")
    monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    WandbLogger(save_dir=str(tmp_path), project="genlab", entity="me", group="g", notes="n")
    assert {"id", "project", "entity", "resume"}.isdisjoint(seen)
    assert seen["group"] == "g" and seen["notes"] == "n"
    assert not (tmp_path / "wandb" / "run_id").exists()
    monkeypatch.delenv("WANDB_SWEEP_ID")
    seen.clear()
    WandbLogger(save_dir=str(tmp_path), project="genlab", tags=["a"])
    assert seen["project"] == "genlab" and seen["tags"] == ["a"] and seen["resume"] == "allow"
    assert seen["id"] == (tmp_path / "wandb" / "run_id").read_text().strip()


def _agent_command(sweep: dict, values: dict) -> list[str]:
    """The command `wandb agent` runs for these parameter values (wandb_agent.py's way)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    macros = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    macros.update(env=["/usr/bin/env"], interpreter=["python"], program=[sweep["program"]])
    out: list[str] = []
    for part in map(str, sweep["command"]):
        is_macro = part.startswith("${") and part.endswith("}")
        out += (macros.get(part[2:-1]) or []) if is_macro else [part]
    return out


def test_wandb_sweep_example_command_lines_parse(monkeypatch) -> None:
    sweep = yaml.safe_load(SWEEP.read_text())
    assert sweep["metric"]["name"].startswith("val/")
    choices = {
        k: p["values"] if "values" in p else [p["min"], p["max"]]
        for k, p in sweep["parameters"].items()
    }
    monkeypatch.chdir(REPO)
    combos = list(itertools.product(*choices.values()))
    for combo in combos[:: max(1, len(combos) // 4)]:  # a few, every value of the groups
        cmd = _agent_command(sweep, dict(zip(choices, combo, strict=True)))
        assert cmd[:3] == ["/usr/bin/env", "python", "train.py"]
        assert (REPO / cmd[2]).is_file()
        assert check_command_line(cmd[3:], CONF) is None, cmd
    bad = _agent_command(sweep, {"model.latent_dim": "many", "model/net": "mpl"})
    assert "unknown model/net option 'mpl'" in check_command_line(bad[3:], CONF)
    bad = _agent_command(sweep, {"model.latent_dim": "many"})
    assert "model.latent_dim" in check_command_line(bad[3:], CONF)
    assert os.environ.get("WANDB_MODE") == "disabled"  # nothing here talks to W&B
