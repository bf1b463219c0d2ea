"""Every model x data config composes and instantiates; the groups are all there."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import DATASETS, MODELS, REPO
from hydra.utils import instantiate

from genlab.errors import ConfigError
from genlab.train import build, build_model

FLOWS = {"nice", "realnvp", "glow"}
GANS = {"gan", "ogan", "ali"}  # model 2-D data too, with model/net=mlp
DENOISERS = {"ddpm", "flow_matching"}  # model/net=unet (images) or time_mlp (vectors)
ANY_DATA = FLOWS | GANS | DENOISERS | {"vib"}  # the others need 8-bit images
# Big-data configs at full size cost seconds to build: shrink the widest nets.
SMALL = {
    "nice": ["model.hidden_sizes=[32]"],
    "realnvp": ["model.channels=8"],
    "glow": ["model.channels=8"],
    "vib": ["model.latent_dim=8"],
    "infomax": ["model.hidden_width=32", "model.channels=[8,16]"],
    "ddpm": ["model.sample_steps=2"],
    "made": ["model.hidden_sizes=[16]"],
    "pixelcnn": ["model.channels=8", "model.layers=2"],
    "vqvae": ["model.channels=8", "model.prior_channels=8", "model.prior_layers=2"],
    "flow_matching": [
        "model.sample_steps=2",
        "model.likelihood_solver=euler",
        "model.likelihood_steps=2",
    ],
}


# The data sets genlab ships (image_folder and celeba read files: tests/test_image_data.py).
BUILT_IN = [d for d in DATASETS if d not in ("image_folder", "celeba")]


def test_every_model_builds_for_unlabelled_images_or_says_it_needs_labels(make_cfg) -> None:
    """An image folder without labels (num_classes 0): every family builds except those
    that need labels, which say so in one line."""
    needs_labels = {"cvae": "needs labelled data", "vib": "needs labelled data"}
    for model in MODELS:
        cfg = make_cfg(f"model={model}", "data=image_folder", "data.path=.", "data.size=32")
        if model in needs_labels:
            with pytest.raises(ConfigError, match=needs_labels[model]):
                build_model(cfg.model, (3, 32, 32), 0)
        else:
            assert build_model(cfg.model, (3, 32, 32), 0).data_shape == (3, 32, 32)


@pytest.mark.parametrize("data", BUILT_IN)
@pytest.mark.parametrize("model", MODELS)
def test_every_model_and_data_instantiates(make_cfg, model: str, data: str) -> None:
    cfg = make_cfg(f"model={model}", f"data={data}")
    dm = build(cfg.data, "data")
    images = data != "toy2d"
    assert dm.num_classes >= 2 and len(dm.data_shape) == (3 if images else 1)
    if not images and model not in ANY_DATA:  # Bernoulli / BCE need 8-bit images
        needs_images = (
            r"model(\.likelihood=bernoulli|\.loss=bce|=aae|=rbm|=dbn|=glann|=infomax|=made|=pixelcnn"
            r"|=vqvae) needs image"
        )
        with pytest.raises(ConfigError, match=needs_images):
            build_model(cfg.model, dm.data_shape, dm.num_classes)
        return
    nets = ["model/net=mlp", "model/net=conv"] if "net" in cfg.model else [None]
    if model in DENOISERS:
        nets = ["model/net=unet", "model/net=time_mlp"]
        if not images:  # the U-Net denoises images only: one line naming time_mlp
            cfg = make_cfg(f"model={model}", f"data={data}", nets.pop(0))
            with pytest.raises(ConfigError, match=r"model/net=time_mlp"):
                build_model(cfg.model, dm.data_shape, dm.num_classes)
    for net in nets:
        if not images and net == "model/net=conv":  # GANs on 2-D data: MLPs only, one line
            cfg = make_cfg(f"model={model}", f"data={data}", net)
            with pytest.raises(ConfigError, match=r"model/net=conv needs images"):
                build_model(cfg.model, dm.data_shape, dm.num_classes)
            continue
        cfg = make_cfg(f"model={model}", f"data={data}", *SMALL.get(model, []), *[net] * bool(net))
        m = build_model(cfg.model, dm.data_shape, dm.num_classes)
        dtype = torch.uint8 if images else torch.float32
        x = m.preprocess(torch.zeros(2, *dm.data_shape, dtype=dtype))
        if hasattr(m, "reconstruct"):
            assert m.reconstruct(x).shape == (2, *dm.data_shape)
        if hasattr(m, "log_prob"):
            assert m.log_prob(x).shape == (2,)
        if hasattr(m, "sample"):
            assert m.sample(3).shape == (3, *dm.data_shape)
        else:  # representation learners: a code per example
            assert m.encode(x).shape[0] == 2
        # plain values only: checkpoints reload without Hydra
        assert all(not type(v).__module__.startswith("omegaconf") for v in m.hparams.values())


def test_trainer_logger_callback_options_instantiate(make_cfg, tmp_path) -> None:
    for trainer in ("default", "cpu", "debug"):
        cfg = make_cfg(f"trainer={trainer}", "logger=[csv,tensorboard,wandb]")
        callbacks = [instantiate(c) for c in cfg.callbacks.values()]
        loggers = [instantiate(c) for c in cfg.logger.values()]
        assert {type(lg).__name__ for lg in loggers} == {
            "CSVLogger",
            "TensorBoardLogger",
            "WandbLogger",
        }
        t = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
        names = {type(c).__name__ for c in t.callbacks}
        assert {
            "BestCheckpoint",
            "ImageGrids",
            "DivergenceGuard",
            "ProgressBar",
            "EpochTimer",
        } <= names
        assert bool(t.fast_dev_run) == (trainer == "debug")
    assert not make_cfg("logger=none").get("logger")
    assert not make_cfg("callbacks=none").get("callbacks")
    gpu = make_cfg("trainer=gpu")
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "bf16-mixed"


EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_builds_its_model(make_cfg, experiment: str) -> None:
    """Each documented recipe composes, and its model builds for its data's shape."""
    cfg = make_cfg(f"experiment={experiment}")
    assert "mnist" in cfg.data._target_.lower()
    model = build_model(cfg.model, (1, 28, 28), 10)
    if hasattr(model, "sample"):
        assert model.sample(2).shape == (2, 1, 28, 28)
    for cb in cfg.callbacks.values():
        instantiate(cb)


def test_help_lists_groups_and_options() -> None:
    out = subprocess.run(
        [sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for line in (
        "model: " + ", ".join(MODELS),
        "model/net: conv, dcgan, dcgan32, dcgan_ln, dcgan_sn, mlp, resnet, resnet32, time_mlp, "
        "unet, wide_mlp",
        "trainer: cpu, ddp, debug, default, gpu",
        "hparams_search: nice_optuna, vae_optuna",
        "logger: csv, none, tensorboard, wandb",
        "callbacks: default, none, test_curve",
        "experiment: " + ", ".join(EXPERIMENTS),
    ):
        assert line in out, line
    assert "data: celeba, cifar10, digits, fashion_mnist, image_folder, mnist, toy2d" in out


@pytest.mark.parametrize("doc", ["README.md", "docs/configuration.md"])
def test_the_docs_config_tables_list_every_option(doc: str) -> None:
    """The README's and the configuration page's group tables name exactly the YAML files
    of each group (they are written by hand and drifted once: new families missing)."""
    import re

    rows = {
        m[1]: set(re.findall(r"`([a-z0-9_]+)`", m[2]))
        for m in re.finditer(r"^\| `([a-z_/]+)` \| (.*?) \|", (REPO / doc).read_text(), re.M)
    }
    for group in ("data", "model", "model/net", "trainer", "logger", "callbacks", "experiment"):
        files = {p.stem for p in (REPO / "conf" / group).glob("*.yaml")}
        assert rows[group] == files, (doc, group, rows[group] ^ files)
    assert rows["hparams_search"] == {p.stem for p in (REPO / "conf/hparams_search").glob("*.yaml")}


def test_hyperparameter_names_mean_one_thing() -> None:
    """No family's hyper-parameter shadows a dict method of its hparams (``update`` once
    did), and width names say their type: ``*_sizes`` lists, ``*_width`` / ``channels``
    integers (the flows' conv channels; lists for Conv-style encoders), never a bare
    ``hidden``."""
    import inspect

    import genlab.models as models
    from genlab.checks import signature_of
    from genlab.models import InfoMax
    from genlab.nn import MLP, Conv

    classes = [c for c in vars(models).values() if inspect.isclass(c)] + [MLP, Conv]
    for cls in classes:
        params, _, _ = signature_of(cls)
        for name, p in params.items():
            assert not hasattr(dict, name), f"{cls.__name__}.{name} shadows dict.{name}"
            assert name != "hidden" and not name.endswith("_hidden"), f"{cls.__name__}.{name}"
            default = p.default
            if name.endswith("_sizes"):
                assert isinstance(default, (list, tuple)), f"{cls.__name__}.{name}"
            # Conv-style encoders (the Conv net, InfoMax's) list one width per layer.
            if name.endswith("_width") or (name == "channels" and cls not in (Conv, InfoMax)):
                assert isinstance(default, int), f"{cls.__name__}.{name}"


def _documented_train_commands() -> list[tuple[str, list[str]]]:
    """(where, overrides) of every ``python train.py ...`` command the reproducibility
    table documents (a multirun's comma lists: their first value)."""
    import shlex

    import yaml

    out = []
    for f in sorted((REPO / "experiments").rglob("reproduction.yaml")):
        for i, row in enumerate(yaml.safe_load(f.read_text()) or []):
            for cmd in str(row.get("command", "")).split(";"):
                words = shlex.split(cmd)
                if words[:2] != ["python", "train.py"]:
                    continue
                over = [w if "," not in w or "[" in w else w.split(",")[0] for w in words[2:]]
                out.append((f"{f.parent.name} row {i + 1}", [w for w in over if w != "-m"]))
    return out


@pytest.mark.parametrize("where,overrides", _documented_train_commands())
def test_the_tables_commands_compose_and_build(make_cfg, where: str, overrides) -> None:
    """Every training command of the reproducibility table is a valid config whose model
    builds: a reader can paste it."""
    cfg = make_cfg(*overrides)
    build_model(cfg.model, (1, 28, 28), 10)
