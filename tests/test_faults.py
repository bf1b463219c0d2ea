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


def test_eval_takes_a_run_folder_even_with_old_setting_names(
    run_dir, tmp_path, capsys, monkeypatch
) -> None:
    spy = _import_spy(tmp_path, monkeypatch)
    old = _copy_run(run_dir, tmp_path / "old")
    cfg = OmegaConf.load(old / ".hydra" / "config.yaml")
    cfg.model.net = {"arch": "genlab.nn.MLP", "hidden": cfg.model.net.hidden_sizes}
    # A callback and a logger of the run's own choosing: eval.py builds neither, so it
    # neither imports nor refuses them.
    cfg.callbacks.early_stop = {"_target_": "spy_module.Callback", "patience": 3}
    cfg.logger = {"extra": {"_target_": "spy_module.Logger"}}
    OmegaConf.save(cfg, old / ".hydra" / "config.yaml")  # as runs before the rename have it
    code, _ = _eval([f"ckpt_path={old}", "model.iwae_samples=4", "metrics.n_test=50"], capsys)
    assert code == 0 and (old / "checkpoints" / "eval_best" / "metrics.json").is_file()
    assert not spy.exists()


def _import_spy(tmp_path: Path, monkeypatch) -> Path:
    """A module ``spy_module`` on sys.path that leaves a file behind when imported."""
    marker = tmp_path / "imported"
    pkg = tmp_path / "spy_path"
    pkg.mkdir(exist_ok=True)
    (pkg / "spy_module.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "class Thing:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop("spy_module", None)
    return marker


def test_eval_runs_no_code_a_foreign_run_folder_names(run_dir, tmp_path, capsys, monkeypatch):
    """Config targets, net factories and family tags outside genlab are refused by name
    with one line, before anything is imported; ``trust=`` lets a package in."""
    spy = _import_spy(tmp_path, monkeypatch)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)

    def folder(name: str, cfg_edit=None, ckpt_edit=None) -> Path:
        d = _copy_run(run_dir, tmp_path / name)
        if cfg_edit:
            cfg = OmegaConf.load(d / ".hydra" / "config.yaml")
            cfg_edit(cfg)
            OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
        if ckpt_edit:
            c = {**saved, "hyper_parameters": dict(saved["hyper_parameters"])}
            ckpt_edit(c)
            torch.save(c, d / "checkpoints" / "last.ckpt")
        return d / "checkpoints" / "last.ckpt"

    def set_key(key: str, value):
        return lambda cfg: OmegaConf.update(cfg, key, value, force_add=True)

    def hp_arch(c):
        c["hyper_parameters"]["net"] = {**c["hyper_parameters"]["net"], "arch": "spy_module.Thing"}

    outside = "lies outside the trusted packages (genlab)"
    cases = [
        (folder("model", set_key("model._target_", "spy_module.Thing")), outside),
        (folder("shell", set_key("model._target_", "os.system")), outside),
        (folder("data", set_key("data._target_", "spy_module.Thing")), outside),
        (folder("nested", set_key("data.extra", {"_target_": "spy_module.Thing"})), outside),
        (folder("scores", set_key("callbacks.sample_scores._target_", "spy_module.T")), outside),
        (folder("arch", set_key("model.net.arch", "spy_module.Thing")), outside),
        (folder("ckpt_arch", ckpt_edit=hp_arch), outside),
        (folder("dunder", set_key("model._target_", "genlab.__builtins__")), "private"),
        (folder("interp", set_key("model._target_", "${oc.env:HOME}")), "not an import path"),
        (folder("function", set_key("model._target_", "genlab.models.common.make_optimizer")),
         "is not a class"),
        (folder("scores_fn", set_key("callbacks.sample_scores._target_", "genlab.train.train")),
         "callbacks.sample_scores._target_='genlab.train.train' is not a class"),
        (folder("number", set_key("model._target_", 42)), "is not an import path"),
        (folder("module", set_key("data._target_", "genlab.data")), "is not a class"),
        (folder("tag", ckpt_edit=lambda c: c.update(genlab_family="spy_module.Thing")),
         "is a spy_module.Thing checkpoint, not genlab.models.vae.VAE"),
    ]  # fmt: skip
    for path, want in cases:
        code, line = _eval([f"ckpt_path={path}"], capsys)
        assert code == 2 and line.startswith("genlab: error:") and want in line, (path, line)
    assert not spy.exists()  # nothing a file named was imported

    # The same checkpoint without eval.py: Family.load_from_checkpoint refuses the factory.
    from genlab.models import VAE

    with pytest.raises(ConfigError, match="model.net.arch 'spy_module.Thing' lies outside"):
        VAE.load_from_checkpoint(tmp_path / "ckpt_arch" / "checkpoints" / "last.ckpt")
    assert not spy.exists()
    # A package the user trusts is imported (and then judged as a class).
    code, line = _eval([f"ckpt_path={cases[0][0]}", "trust=spy_module"], capsys)
    assert code == 2 and "is not a LightningModule class" in line and spy.exists()


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


def test_family_tags_are_compared_by_name(tmp_path: Path) -> None:
    from genlab.checkpoints import check_family
    from genlab.errors import CheckpointError
    from genlab.models import GAN, OGAN, VAE

    path = tmp_path / "x.ckpt"
    check_family({"genlab_family": "genlab.models.vae.VAE"}, VAE, path)
    check_family({"genlab_family": "genlab.models.moved.VAE"}, VAE, path)  # moved in genlab
    check_family({"genlab_family": "genlab.models.ogan.OGAN"}, GAN, path)  # a subclass
    for tag, cls in [
        ("genlab.models.gan.GAN", OGAN),  # a base class is not the subclass
        ("other_pkg.vae.VAE", VAE),  # the same class name outside genlab
        ("genlab.models.vae.AE", VAE),
        (["genlab.models.vae.VAE"], VAE),
    ]:
        with pytest.raises(CheckpointError, match="checkpoint|class name"):
            check_family({"genlab_family": tag}, cls, path)
