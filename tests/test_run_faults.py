"""Faults while a run is under way: a DDP rank that dies, a disk that fills, a SLURM
requeue, a torchrun launch. Each ends in one line naming what happened, what was kept
and how to resume (or, for a requeue, continues the run)."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO

from genlab.errors import WriteFailed
from genlab.train import train


def _disk_full(path: object = "x") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_keeps_the_last_one(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    """The file system refuses epoch 1's checkpoint (as torch's writer reports it: a
    RuntimeError): the run stops naming the file and epoch 0's last.ckpt, which is whole
    and loads; no temporary file is left behind."""
    import genlab.checkpoints as ckpts

    real_save = torch.save

    def full_after_epoch_0(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 1:
            f.write(b"half a checkpoint")  # what a full disk leaves in the temporary file
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(ckpts.torch, "save", full_after_epoch_0)
    cfg = make_cfg(
        "trainer.max_epochs=3", "metrics.every_n_epochs=0", "trainer.limit_train_batches=2"
    )
    with pytest.raises(WriteFailed) as info:
        train(cfg)
    monkeypatch.setattr(ckpts.torch, "save", real_save)
    last = tmp_path / "checkpoints" / "last.ckpt"
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("could not write the checkpoint ")
    assert "the write failed, " in msg and "MiB free there (PytorchStreamWriter" in msg
    assert f"the last good checkpoint is {last} (epoch 0, step 2)" in msg
    assert msg.endswith("resume with ckpt_path=last") and info.value.exit_code == 74
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    assert not [p.name for p in last.parent.iterdir() if ".tmp" in p.name]


def test_a_full_disk_at_an_image_grid_or_a_cache_names_the_file(
    make_cfg, tmp_path: Path, monkeypatch
) -> None:
    import genlab.cache
    import genlab.callbacks.images as images

    def no_space(grid, path, *args, **kwargs):
        raise _disk_full(path)

    monkeypatch.setattr(images, "save_image", no_space)
    cfg = make_cfg("trainer.max_epochs=2", "metrics.every_n_epochs=0",
                   "callbacks.image_grids.every_n_epochs=2")  # fmt: skip
    with pytest.raises(WriteFailed) as info:
        train(cfg)
    msg = str(info.value)
    assert re.match(r"could not write the image grid .*/images/\w+_epoch0001\.png: No space", msg)
    assert re.search(r"last\.ckpt \(epoch 0, step \d+\): free space", msg)  # epoch 0's
    monkeypatch.undo()

    real_save = torch.save

    def no_space_for_caches(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)):  # files (not the in-memory buffers)
            raise _disk_full(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(genlab.cache.torch, "save", no_space_for_caches)
    cfg = make_cfg("trainer.max_epochs=1", f"metrics.cache_dir={tmp_path / 'empty_cache'}",
                   output_dir=tmp_path / "run2")  # fmt: skip
    with pytest.raises(WriteFailed, match=r"could not write the cache file .*empty_cache.*"
                       r": No space left on device; no checkpoint was written yet"):  # fmt: skip
        train(cfg)
    monkeypatch.undo()

    import genlab.loggers

    def no_space_for_metrics(writer):
        raise _disk_full(writer.metrics_file_path)

    monkeypatch.setattr(genlab.loggers.ExperimentWriter, "save", no_space_for_metrics)
    cfg = make_cfg("trainer.max_epochs=2", "metrics.every_n_epochs=0", "logger=csv",
                   output_dir=tmp_path / "run3")  # fmt: skip
    with pytest.raises(WriteFailed) as info:
        train(cfg)
    assert re.match(r"could not write the file .*/csv/metrics\.csv: No space left on device; ",
                    str(info.value))  # fmt: skip


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_ddp_rank_ends_the_run_in_seconds_with_one_line(tmp_path: Path, killed) -> None:
    """Two CPU processes (gloo); one is killed mid-run: the other exits within seconds,
    non-zero, with one line naming the dead rank, the last good checkpoint and how to
    resume; last.ckpt is whole and no temporary checkpoint is left."""
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("WANDB_SERVICE", None)
    args = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv",
            "trainer.max_epochs=100000", "metrics.every_n_epochs=0", "model.iwae_samples=8",
            "callbacks.image_grids.every_n_epochs=1000", "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}"]  # fmt: skip
    p = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 180
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    worker = subprocess.run(["pgrep", "-f", f"genlab.worker {run}"], capture_output=True, text=True)
    pid = int(worker.stdout.split()[0]) if killed == 1 else p.pid
    os.kill(pid, signal.SIGKILL)
    start = time.time()
    out, err = p.communicate(timeout=120)  # (rank 0 killed: until rank 1 closes the pipes)
    took = time.time() - start
    assert took < 30 and "Traceback" not in out + err
    line = err.strip().splitlines()[-1]
    if killed == 1:
        assert p.returncode == 75, err[-2000:]
        assert line.startswith(f"genlab: rank failed: DDP rank 1 (pid {pid}) was killed by SIGKILL")
        assert re.search(rf"the last good checkpoint is {re.escape(str(last))} \(epoch \d+, ", line)
        assert line.endswith("ckpt_path=last") and "resume with genlab-train trainer=ddp" in line
    else:  # rank 1's line (its exit code is not this process's: rank 0 was killed)
        assert line.startswith(f"genlab: rank failed: [rank 1] DDP rank 0 (pid {pid}) stopped at ")
        assert f"the last good checkpoint is {last}: resume with rank 0's command" in line
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0
    if killed == 1:  # (rank 0 killed inside a save leaves its temporary: the next save's)
        assert not [f.name for f in last.parent.iterdir() if ".tmp" in f.name]


def test_the_rank_watch_ends_a_blocked_rank_0(tmp_path: Path) -> None:
    """Where rank 0 never hears of a dead rank (blocked in an NCCL collective), its
    RankWatch prints the line, stops the other ranks and exits with RankFailed's code."""
    script = tmp_path / "blocked.py"
    script.write_text(
        "import subprocess, sys, time\n"
        "from genlab.distributed import RankWatch\n"
        "procs = [subprocess.Popen([sys.executable, '-c', 'import sys; sys.exit(3)']),\n"
        "         subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])]\n"
        "watch = RankWatch(procs, grace=0.5, period=0.2)\n"
        "watch.message = lambda what: what + '; the last good checkpoint is x'\n"
        "watch.start()\n"
        "time.sleep(60)  # the blocked collective\n"
    )
    start = time.time()
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 75 and time.time() - start < 30
    assert re.fullmatch(
        r"genlab: rank failed: DDP rank 1 \(pid \d+\) exited with code 3; the last good "
        r"checkpoint is x", p.stderr.strip()
    )  # fmt: skip


def test_a_requeued_slurm_job_continues_its_run(tmp_path: Path) -> None:
    """Under SLURM's environment (a stand-in scontrol on PATH): SIGUSR1, the requeue
    signal, saves hpc_ckpt_1.ckpt and requeues the job; SIGTERM then stops it. Started
    again with SLURM_RESTART_COUNT=1, the same command continues in the same run folder
    (named after the job and step, not the clock), from its newest checkpoint, with the
    same W&B run id."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {**os.environ, "WANDB_MODE": "offline", "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "1",
           "SLURM_JOB_NAME": "genlab", "SLURM_NODELIST": "localhost", "SLURM_NODEID": "0",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}  # fmt: skip
    env.pop("WANDB_SERVICE", None)
    args = ["logger=[csv,wandb]", "metrics.every_n_epochs=0", "test=false",
            "callbacks.image_grids.every_n_epochs=1000",
            "trainer.enable_progress_bar=false"]  # fmt: skip
    run = tmp_path / "outputs" / "slurm-4242.0_vae_digits"
    p = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args, "trainer.max_epochs=100000"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 180
    while not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGUSR1)
    while not (record.exists() and (run / "hpc_ckpt_1.ckpt").exists()) and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert record.read_text().split() == ["requeue", "4242"]
    hpc = torch.load(run / "hpc_ckpt_1.ckpt", map_location="cpu", weights_only=True)
    first_id = (run / "wandb" / "run_id").read_text().strip()
    # The requeued job: the same command, SLURM_RESTART_COUNT=1; it ends after 2 more epochs.
    epochs = hpc["epoch"] + 3
    again = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args, f"trainer.max_epochs={epochs}"],
        cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert [d.name for d in (tmp_path / "outputs").iterdir()] == [run.name]
    resumed = re.search(r"Resuming (\S+)", again.stdout + again.stderr)
    assert resumed, again.stdout[-2000:]
    assert re.fullmatch(rf".*{run.name}/(hpc_ckpt_1|checkpoints/last)\.ckpt", resumed[1])
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == epochs - 1 and last["global_step"] > hpc["global_step"]
    assert (run / "wandb" / "run_id").read_text().strip() == first_id
    runs = {d.name.rsplit("-", 1)[-1] for d in (run / "wandb").glob("offline-run-*")}
    assert runs == {first_id}


def test_run_names_agree_across_the_processes_of_one_launch(monkeypatch) -> None:
    from genlab import run_name as rn

    for k in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_JOB_ID", "SLURM_STEP_ID",
              "SLURM_ARRAY_JOB_ID", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):  # fmt: skip
        monkeypatch.delenv(k, raising=False)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_vae_mnist", rn.run_name("vae_mnist"))
    # torchrun on one node: the agent's (this process's parent's) start time, whenever asked
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    first = rn.run_name("x")
    time.sleep(1.1)
    assert rn.run_name("x") == first == rn._dated(rn._process_start(os.getppid()), "x")
    monkeypatch.setenv("WORLD_SIZE", "8")  # several nodes: the rendezvous id
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "exp7")
    assert rn.run_name("x") == "torchrun-exp7_x"
    for k in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK"):
        monkeypatch.delenv(k)
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert rn.run_name("x") == "slurm-99.3_x"
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "98")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert rn.run_name("x") == "slurm-98_5.3_x"


def test_torchrun_gives_one_run_folder_and_one_wandb_run(tmp_path: Path) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SERVICE", None)
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run(
        [str(torchrun), "--nproc_per_node=2", str(REPO / "train.py"), "trainer=ddp",
         "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
         "metrics.every_n_epochs=0", "test=false", "logger=[csv,wandb]"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    (run,) = (tmp_path / "outputs").glob("*/*")  # one folder: <date>/<time>_vae_digits
    assert run.name.endswith("_vae_digits") and (run / "checkpoints" / "last.ckpt").is_file()
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
