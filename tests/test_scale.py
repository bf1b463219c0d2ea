"""Scale and operations (issue 7): multirun and Optuna sweeps (resumable, W&B groups),
DDP on CPU with 2 processes (gloo) alone and under -m, and the cluster launchers."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, compose_cfg, csv_rows, train_py

from genlab.models import AE
from genlab.train import train

FAST = [
    "data=digits",
    "logger=[csv,wandb]",  # wandb disabled in tests: its config still carries the group
    "metrics.probes=false",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
]


def _losses(run: Path) -> list[float]:
    """val/loss of each epoch, then test/loss."""
    rows = csv_rows(run)
    return [float(r[k]) for k in ("val/loss", "test/loss") for r in rows if r.get(k)]


def _group(run: Path) -> str | None:
    return yaml.safe_load((run / "csv" / "hparams.yaml").read_text())["logger"]["wandb"]["group"]


def test_optuna_search_resumes_from_its_sqlite_study(tmp_path: Path) -> None:
    search = [
        "hparams_search=vae_optuna",
        *FAST,
        "trainer=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "metrics.every_n_epochs=0",
        "test=false",
    ]
    first = train_py([*search, "hydra.sweeper.n_trials=2"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    # Killed inside its next trial: that trial is left RUNNING in the study.
    kill = ["+callbacks.kill._target_=genlab.testing.KillAtStep", "+callbacks.kill.step=1"]
    killed = train_py([*search, "hydra.sweeper.n_trials=4", *kill], tmp_path)
    assert killed.returncode == -9
    # The same command again finishes the budget: 4 finished trials in all, not 2 + 4.
    again = train_py([*search, "hydra.sweeper.n_trials=4"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "has 2 finished trial(s); running 2 more" in again.stdout + again.stderr
    with sqlite3.connect(tmp_path / "optuna.db") as db:
        states = [s for (s,) in db.execute("select state from trials order by trial_id")]
        lrs = [
            v
            for (v,) in db.execute(
                "select p.param_value from trial_params p join trials t using (trial_id) "
                "where p.param_name = 'model.lr' and t.state = 'COMPLETE'"
            )
        ]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], states
    # The resumed sampler does not repeat finished trials (it retries the killed one).
    assert len(lrs) == 4 and len(set(lrs)) == 4
    runs = sorted((tmp_path / "multirun").glob("*/*/[0-9]*"))
    assert len(runs) == 5 and all(_group(r) == "vae_digits" for r in runs if (r / "csv").is_dir())
    # The resumed sweep's results (the newest file) report the study's best finished trial.
    results = (tmp_path / "multirun").glob("*/*/optimization_results.yaml")
    result = yaml.safe_load(max(results, key=lambda f: f.stat().st_mtime_ns).read_text())
    with sqlite3.connect(tmp_path / "optuna.db") as db:  # the best of the finished trials
        done = db.execute(
            "select v.value from trial_values v join trials t using (trial_id) "
            "where t.state = 'COMPLETE'"
        ).fetchall()
    assert result["best_value"] == pytest.approx(min(v for (v,) in done))


def test_ddp_two_processes_match_one(tmp_path: Path) -> None:
    """Same global batch (2 x 64 vs 1 x 128) and data order: equal validation losses
    within 1e-3 (relative; measured: equal), as float sums are reduced in another order.
    Each of the 179 validation images counts once (rank 1 runs a padding batch weighed 0).
    A deterministic model (AE)."""
    common = [
        *FAST,
        "model=ae",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.limit_train_batches=11",  # 11 full batches: no ragged last batch
        "metrics.every_n_epochs=0",
    ]
    two = train_py(
        [*common, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
         "data.batch_size=64", f"hydra.run.dir={tmp_path / 'two'}"], tmp_path,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    # The one-process baseline in this process (no second interpreter start-up).
    train(compose_cfg([*common, "trainer=cpu", "data.batch_size=128"], tmp_path / "one"))
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 3  # two epochs and the test
    assert a == pytest.approx(b, rel=1e-3)
    assert "MEMBER: 2/2" in two.stdout + two.stderr  # (two really ran two processes)
    # Rank 0 alone wrote files: one checkpoint folder, images, one CSV.
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]
    assert any((tmp_path / "two" / "images").glob("*.png"))


def test_multirun_with_ddp_runs_each_trial_on_both_ranks(tmp_path: Path) -> None:
    p = train_py(
        ["-m", *FAST, "model=ae", "trainer=ddp", "trainer.accelerator=cpu",
         "trainer.devices=2", "trainer.max_epochs=1", "metrics.every_n_epochs=0",
         "test=false", "model.latent_dim=3,5", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout + p.stderr
    assert out.count("GLOBAL_RANK: 1, MEMBER: 2/2") == 2  # one rank 1 per trial
    assert out.count("#0 :") == 1 and out.count("#1 :") == 1  # the sweep ran once
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    for job, d in zip(jobs, (3, 5), strict=True):
        # rank 1 trained the trial's own config (DDP checks equal parameter shapes)
        rank1 = yaml.safe_load((job / ".hydra" / "ddp_config.yaml").read_text())
        assert rank1["model"]["latent_dim"] == d
        model = AE.load_from_checkpoint(job / "checkpoints" / "last.ckpt")
        assert model.hparams.latent_dim == d
        assert model.encoder(torch.zeros(1, 1, 8, 8)).shape == (1, d)


def test_plain_multirun_and_submitit_local(tmp_path: Path) -> None:
    p = train_py(
        ["-m", "hydra/launcher=submitit_local", *FAST, "trainer=debug", "model.latent_dim=2,4",
         f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = sorted((tmp_path / "sweep").glob("[0-9]*"))
    assert [j.name for j in jobs] == ["0", "1"]
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # ran through submitit
    for job, d in zip(jobs, (2, 4), strict=True):
        assert (
            yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["model"]["latent_dim"] == d
        )
        assert "Outputs in" in (job / "train.log").read_text()


def test_slurm_launcher_is_wired_to_the_trainer(make_cfg) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
             "hydra.launcher.partition=gpu"],
            return_hydra_config=True,
        )  # fmt: skip
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert launcher.partition == "gpu"
    assert cfg.trainer.strategy._target_ == "genlab.distributed.JobDDPStrategy"


def test_gan_trains_under_ddp_on_two_processes(tmp_path: Path) -> None:
    """Two backward passes per step, each reaching one player's parameters (and a
    gradient penalty's double backward): DDP must reduce both without unused-parameter
    errors, and the ranks must stay in step (rank 0's EMA counts every G step once). With
    no cached feature network, rank 0 trains it while the other rank waits at a barrier."""
    run = tmp_path / "ddp"
    p = train_py(
        ["model=gan", "model/net=conv", "model.net.channels=[8,16]", "model.net.hidden_width=32",
         "model.loss=wgan_gp", "model.ema_start=2", "model.monitor=null",
         "metrics.every_n_epochs=0", "callbacks.sample_scores.probes=false",
         "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2",
         "logger=csv", f"metrics.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
        tmp_path,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    batches = ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    assert batches > 0 and ckpt["global_step"] == 2 * batches  # D and G stepped each batch
    assert int(ckpt["state_dict"]["ema_count"]) == batches
    fids = [float(r["test/fid"]) for r in csv_rows(run) if r.get("test/fid")]
    assert len(fids) == 1 and torch.isfinite(torch.tensor(fids[0]))


def test_eval_on_two_processes_gives_the_numbers_of_one(make_cfg, tmp_path: Path) -> None:
    """One checkpoint (a small class-conditional flow matching model on digits), eval.py
    in one process and in two (gloo): the same FID / KID / precision / recall / density /
    coverage and cond_acc of the same 179 samples (the total, not per rank), the same
    bits/dim of the same first bpd_max_images=120 test images (4 batches of 50 dealt out
    2 + 2, the third cut at 120), the same seeded test loss."""
    import json

    from omegaconf import OmegaConf

    from genlab.train import train

    cfg = make_cfg(
        "model=flow_matching", "model.conditional=true", "model.net.channels=8",
        "model.net.channel_mults=[1,2]", "model.net.attention=false", "model.solver=euler",
        "model.sample_steps=2", "model.likelihood_solver=euler", "model.likelihood_steps=2",
        "model.bpd_max_images=120", "data.eval_batch_size=50", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "metrics.every_n_epochs=0", "metrics.n_test=179",
        "test=false", f"metrics.cache_dir={tmp_path / 'cache'}",
    )  # fmt: skip
    train(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    results, last = [], tmp_path / "checkpoints" / "last.ckpt"
    for extra in ([], ["trainer.devices=2"]):
        out = subprocess.run(
            [sys.executable, str(REPO / "eval.py"), f"ckpt_path={last}", *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        record = json.loads((tmp_path / "checkpoints" / "eval_last" / "metrics.json").read_text())
        results.append(record)
    one, two = (r["metrics"] for r in results)
    assert [r["processes"] for r in results] == [1, 2]
    want = {"test/loss", "test/bpd", "test/loglik", "test/fid", "test/kid", "test/precision",
            "test/recall", "test/density", "test/coverage", "test/cond_acc"}  # fmt: skip
    assert want <= set(one) and set(one) == set(two), sorted(set(one) ^ set(two))
    for k in sorted(one):
        assert two[k] == pytest.approx(one[k], rel=1e-5, abs=1e-6), k
