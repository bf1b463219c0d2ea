"""Faults around a run: eval.py on missing, unreadable or foreign run folders, configs and
checkpoints; corrupt caches; unwritable folders; Ctrl-C and SIGTERM. Each stops with one
line (or recovers, for caches) and never with a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

from genlab.errors import ConfigError
from genlab.evaluate import main as eval_main
from genlab.train import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished one-epoch VAE run on digits, laid out as a Hydra run folder."""
    from conftest import compose_cfg

    out = tmp_path_factory.mktemp("run")
    cfg = compose_cfg(
        ["trainer=cpu", "logger=csv", "trainer.max_epochs=1", "test=false",
         "trainer.enable_model_summary=false", "model.iwae_samples=4"], out,
    )  # fmt: skip
    train(cfg)
    (out / ".hydra").mkdir()
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


def _eval(args: list[str], capsys) -> tuple[int, str]:
    """genlab-eval in this process: (exit code, the last stderr line)."""
    with pytest.raises(SystemExit) as e:
        eval_main(args)
        raise SystemExit(0)
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in err)
    return e.value.code, err[-1] if err else ""


def _copy_run(run_dir: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, dest)
    return dest


def test_eval_faults_are_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cases: list[tuple[list[str], str]] = [
        ([], "genlab: error: no ckpt_path=..."),
        ([f"ckpt_path={tmp_path / 'missing.ckpt'}"], "is not a file"),
        ([f"ckpt_path={tmp_path}"], "is a folder without checkpoints/*.ckpt"),
        ([f"ckpt_path={ckpt}", "model.iwae_samples=abc"], "model.iwae_samples must be an integer"),
        ([f"ckpt_path={ckpt}", "model.iwae_sampels=4"], "model.iwae_sampels is not a setting"),
        ([f"ckpt_path={ckpt}", "metrics.n_test=-1"], "metrics.n_test must be a positive integer"),
        ([f"ckpt_path={ckpt}", "model.iwae_samples"], "overrides must be key=value"),
        ([f"ckpt_path={ckpt}", "data=mnist"], "not whole groups: 'data=mnist'"),
        (["ckpt_path="], "ckpt_path is empty"),
    ]
    # A checkpoint outside any run folder: no config beside it.
    lone = tmp_path / "lone" / "x.ckpt"
    lone.parent.mkdir()
    lone.write_bytes(ckpt.read_bytes())
    cases.append(([f"ckpt_path={lone}"], "no run config at"))
    # An unreadable (not YAML) and a foreign (not genlab's) run config.
    bad_yaml = _copy_run(run_dir, tmp_path / "bad_yaml")
    (bad_yaml / ".hydra" / "config.yaml").write_text("model: [unclosed\n  - x: {\n")
    cases.append(([f"ckpt_path={bad_yaml / 'checkpoints/last.ckpt'}"], "is not valid YAML"))
    foreign = _copy_run(run_dir, tmp_path / "foreign_cfg")
    (foreign / ".hydra" / "config.yaml").write_text("lr: 0.1\nlayers: [3, 4]\n")
    cases.append(([f"ckpt_path={foreign / 'checkpoints/last.ckpt'}"], "is not a genlab run config"))
    # A truncated checkpoint, a torch file that is not a Lightning checkpoint, and another
    # family's checkpoint under this run's config.
    cut = _copy_run(run_dir, tmp_path / "cut")
    (cut / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes()[:2000])
    cases.append(([f"ckpt_path={cut / 'checkpoints/last.ckpt'}"], "is not readable"))
    plain = _copy_run(run_dir, tmp_path / "plain")
    torch.save({"weights": torch.zeros(3)}, plain / "checkpoints" / "last.ckpt")
    cases.append(
        ([f"ckpt_path={plain / 'checkpoints/last.ckpt'}"], "is not a Lightning checkpoint")
    )
    other = _copy_run(run_dir, tmp_path / "other")
    cfg = OmegaConf.load(other / ".hydra" / "config.yaml")
    cfg.model = {"_target_": "genlab.models.AE", "latent_dim": 16}  # a valid AE config
    OmegaConf.save(cfg, other / ".hydra" / "config.yaml")
    cases.append(([f"ckpt_path={other / 'checkpoints/last.ckpt'}"], "is a genlab.models.vae.VAE"))
    # The output folder can't be made (a file is in the way).
    blocked = _copy_run(run_dir, tmp_path / "blocked")
    (blocked / "checkpoints" / "eval_last").write_text("in the way")
    cases.append(([f"ckpt_path={blocked / 'checkpoints/last.ckpt'}"], "eval output folder="))
    for args, want in cases:
        code, line = _eval(args, capsys)
        assert code == 2 and line.startswith("genlab: error:") and want in line, (args, line)


def test_eval_takes_a_run_folder_even_with_old_setting_names(run_dir, tmp_path, capsys) -> None:
    old = _copy_run(run_dir, tmp_path / "old")
    cfg = OmegaConf.load(old / ".hydra" / "config.yaml")
    cfg.model.net = {"arch": "genlab.nn.MLP", "hidden": cfg.model.net.hidden_sizes}
    OmegaConf.save(cfg, old / ".hydra" / "config.yaml")  # as runs before the rename have it
    code, _ = _eval([f"ckpt_path={old}", "model.iwae_samples=4", "metrics.n_test=50"], capsys)
    assert code == 0 and (old / "checkpoints" / "eval_best" / "metrics.json").is_file()


def test_corrupt_caches_are_rebuilt(tmp_path: Path, caplog) -> None:
    from genlab.data import Digits
    from genlab.metrics.features import cache_path, get_feature_net, net_key
    from genlab.metrics.spaces import genlab_space, load_real, real_key, save_real

    dm = Digits()
    dm.setup()
    cache_path(tmp_path, net_key(dm, "classifier", 1)).write_bytes(b"not a torch file")
    net, record = get_feature_net(dm, tmp_path, epochs=1)
    assert record["val_acc"] > 0.5 and "unreadable" in caplog.text
    stats = tmp_path / "stats.pt"
    stats.write_bytes(b"\x00" * 10)
    space = genlab_space("classifier", dm, tmp_path, 1)
    x = dm.splits["val"][0][:50]
    key = real_key(space, x)
    assert load_real(stats, key) is None
    feats = space.features(x)
    save_real(stats, key, feats)
    assert feats.shape == (50, net.num_features)
    assert torch.equal(load_real(stats, key), feats)  # rewritten


def test_unwritable_folders_stop_before_training(make_cfg, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"^metrics.cache_dir=.* is not a writable folder"):
        train(make_cfg(f"metrics.cache_dir={blocker / 'cache'}"))
    with pytest.raises(ConfigError, match=r"^paths.output_dir=.* is not a writable folder"):
        train(make_cfg(output_dir=blocker / "run"))


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "Ctrl-C"),
                                                   (signal.SIGTERM, 143, "SIGTERM")])  # fmt: skip
def test_interrupted_run_stops_with_one_line_and_its_checkpoint(tmp_path, sig, code, name) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("WANDB_SERVICE", None)
    args = ["trainer=cpu", "logger=csv", "trainer.max_epochs=1000", "metrics.every_n_epochs=0",
            "trainer.enable_progress_bar=false", f"hydra.run.dir={run}"]  # fmt: skip
    p = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A suite started in the background (cmd &) inherits an ignored SIGINT: the run
        # gets the terminal's default, as a user's foreground run has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert p.returncode == code, err[-2000:]
    assert "Traceback" not in out + err
    assert lines[-1].startswith(f"genlab: interrupted: {name} stopped the run at epoch ")
    assert f"last checkpoint: {last}" in lines[-1] and "resume with ckpt_path=last" in lines[-1]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] > 0


def test_renamed_hyperparameters_of_older_checkpoints_load(tmp_path: Path) -> None:
    from genlab.models import GAN, NICE

    gan = GAN((1, 8, 8), latent_dim=4, update_rule="single_step",
              net={"arch": "genlab.nn.Conv", "channels": [8], "hidden_width": 16})  # fmt: skip
    nice = NICE((1, 4, 4), hidden_sizes=[8])
    old_net = {"arch": "genlab.nn.Conv", "channels": [8], "hidden": 16}
    for model, old in ((gan, {"update": "single_step", "net": old_net}), (nice, {"hidden": [8]})):
        path = tmp_path / f"{type(model).__name__}.ckpt"
        hp = {k: v for k, v in model.hparams.items() if k not in ("update_rule", "hidden_sizes")}
        hp.pop("net", None)
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": {**hp, **old},
                "genlab_family": f"{type(model).__module__}.{type(model).__name__}",
                "pytorch-lightning_version": "2.6.0",
            },
            path,
        )
        loaded = type(model).load_from_checkpoint(path)
        assert dict(loaded.hparams) == dict(model.hparams)


def test_corrupt_study_run_id_and_csv_log_are_handled(tmp_path: Path) -> None:
    from conftest import CONF

    from genlab.cli import check_command_line
    from genlab.loggers import CSVLogger, run_id

    db = tmp_path / "optuna.db"
    db.write_text("not a database")
    problem = check_command_line(
        ["hparams_search=vae_optuna", f"hydra.sweeper.storage=sqlite:///{db}"], CONF
    )
    assert problem is not None and "is not a readable SQLite database" in problem
    # A damaged W&B run id file: a new id, not a W&B error.
    (tmp_path / "run_id").write_bytes(b"\x00\xffnot an id at all\n")
    new = run_id(tmp_path / "run_id")
    assert len(new) == 8 and new.isalnum()
    # A damaged metrics.csv in a resumed run: moved aside, a new log starts.
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("epoch,step\n0,not-a-step\n")
    logger = CSVLogger(save_dir=str(tmp_path), name="csv", version="", resume_step=5)
    logger.log_metrics({"train/loss": 1.0}, step=6)
    logger.save()
    assert (tmp_path / "csv" / "metrics.csv.unreadable").is_file()
    assert "train/loss" in (tmp_path / "csv" / "metrics.csv").read_text()
