"""Fault tolerance (issue 7): a SIGKILLed run restarted with the same command plus
``ckpt_path=last`` ends exactly like an uninterrupted one and continues its W&B run and
CSV log; checkpoints are written atomically, load safely, and refuse the wrong model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import csv_rows, train_py

from genlab.checkpoints import AtomicCheckpointIO, read_checkpoint
from genlab.errors import CheckpointError
from genlab.models import AE, GAN, VAE
from genlab.train import train

# 12 batches per epoch on digits: the kill at step 30 is in the third epoch, after the
# epoch-2 checkpoint (step 24) and before the next.
RUN = [
    "data=digits",
    "model=vae",
    "trainer=cpu",
    "trainer.max_epochs=4",
    "trainer.deterministic=true",
    "logger=[csv,wandb]",
    "metrics.probes=false",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
]
KILL = ["+callbacks.kill._target_=genlab.testing.KillAtStep", "+callbacks.kill.step=30"]


def _offline(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return train_py(args, cwd, wandb_mode="offline")


def _final(rows: list[dict[str, str]]) -> dict[str, float]:
    out = {}
    for r in rows:
        out.update({k: float(v) for k, v in r.items() if v and k.startswith(("val/", "test/"))})
    return out


def test_killed_run_resumes_exactly_and_continues_its_wandb_run(tmp_path: Path) -> None:
    ref = _offline([*RUN, f"hydra.run.dir={tmp_path / 'ref'}"], tmp_path)
    assert ref.returncode == 0, ref.stderr[-2000:]
    # The same command in the default (timestamped) run folders, killed mid-epoch ...
    killed = _offline([*RUN, *KILL], tmp_path)
    assert killed.returncode == -9, killed.stderr[-2000:]
    (run,) = (tmp_path / "outputs").glob("*/*")
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 24
    # ... and restarted with ckpt_path=last: it finds that run and continues in it.
    resumed = _offline([*RUN, *KILL, "ckpt_path=last"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (
        f"outputs continue in outputs/{run.parent.name}/{run.name}"
        in resumed.stdout + resumed.stderr
    )

    want, got = _final(csv_rows(tmp_path / "ref")), _final(csv_rows(run))
    assert "test/loss" in want and "val/fid" in want and want.keys() == got.keys()
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-6), k
    # One CSV log with each epoch once (the killed epoch's rows were dropped, not doubled).
    epochs = [r["epoch"] for r in csv_rows(run) if r.get("val/loss")]
    assert epochs == ["0", "1", "2", "3"]
    # One W&B run id for both processes.
    run_id = (run / "wandb" / "run_id").read_text().strip()
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.endswith(run_id) for p in offline), offline


def test_last_without_a_checkpoint_is_one_line(make_cfg, tmp_path) -> None:
    with pytest.raises(CheckpointError, match="ckpt_path=last: no last.ckpt"):
        train(make_cfg("ckpt_path=last"))
    # auto_resume starts fresh instead.
    metrics, _ = train(make_cfg("auto_resume=true", "trainer.max_epochs=1", "test=false"))
    assert "val/loss" in metrics and (tmp_path / "checkpoints" / "last.ckpt").is_file()


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-save")


def test_atomic_save_keeps_the_old_file(tmp_path: Path) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1)}, path)
    with pytest.raises(RuntimeError, match="killed mid-save"):
        io.save_checkpoint({"step": torch.tensor(2), "bad": _Unpicklable()}, path)
    assert read_checkpoint(path)["step"] == 1  # the previous checkpoint, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left


def test_checkpoints_load_safely_and_refuse_other_families(make_cfg, tmp_path) -> None:
    train(make_cfg("trainer.max_epochs=1", "test=false", "callbacks.latent_tools=null"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickled objects
    assert ckpt["genlab_family"] == "genlab.models.vae.VAE"
    assert isinstance(VAE.load_from_checkpoint(path), VAE)
    with pytest.raises(CheckpointError, match=r"is a genlab.models.vae.VAE checkpoint, not .*GAN"):
        GAN.load_from_checkpoint(path)
    with pytest.raises(CheckpointError, match="not genlab.models.ae.AE"):
        AE.load_from_checkpoint(path)
    # Resuming with a config whose model doesn't fit: one line naming the difference.
    with pytest.raises(CheckpointError, match=r"does not fit .*latent_dim"):
        train(make_cfg("model.latent_dim=3", f"ckpt_path={path}", output_dir=tmp_path / "b"))
    with pytest.raises(CheckpointError, match="is a genlab.models.vae.VAE checkpoint"):
        train(make_cfg("model=ae", f"ckpt_path={path}", output_dir=tmp_path / "c"))
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="not readable"):
        VAE.load_from_checkpoint(path)


def test_ctrl_c_during_a_save_waits_for_the_whole_file(tmp_path: Path) -> None:
    import os
    import signal

    class SignalsMidSave:
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while torch.save is writing
            return (dict, ())

    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    # Python's Ctrl-C handler, also where the suite was started with SIGINT ignored (cmd &).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            io.save_checkpoint({"step": torch.tensor(3), "x": SignalsMidSave()}, path)
    finally:
        signal.signal(signal.SIGINT, before)
    saved = torch.load(path, weights_only=False)  # (the test's object is not weights-only)
    assert saved["step"] == 3  # written whole, then the interrupt


def test_a_save_removes_temporaries_of_dead_processes(tmp_path: Path) -> None:
    """A save cut off by SIGKILL leaves last.ckpt.tmp-<pid>: the next save removes it
    (its process is gone), not a live process's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"last.ckpt.tmp-{dead.pid}"
    live = tmp_path / f"last.ckpt.tmp-{os.getppid()}"
    stale.write_bytes(b"half")
    live.write_bytes(b"being written")
    AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", live.name]
