"""Evaluation: the feature network, FID / KID (torchmetrics) against an independent
computation, sanity orderings, conditional accuracy, probes, and eval.py."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import DATA_DIR, REPO, needs_mnist
from omegaconf import OmegaConf

from genlab.callbacks import SampleScores
from genlab.data import MNIST, Digits
from genlab.metrics.features import get_feature_net
from genlab.metrics.scores import extract, fid_kid_of, knn_acc, linear_probe_acc, make_fid_kid
from genlab.metrics.scores import set_real as load_real
from genlab.train import train

CACHE = Path(os.environ["GENLAB_CACHE"])


@pytest.fixture(scope="module")
def mnist():
    dm = MNIST(data_dir=str(DATA_DIR), download=False)
    dm.setup()
    net, record = get_feature_net(dm, CACHE)
    return dm, net, record


@needs_mnist
def test_mnist_feature_net_is_accurate_and_cached(mnist) -> None:
    dm, net, record = mnist
    assert record["test_acc"] >= 0.99, record
    path = CACHE / "mnist.pt"
    mtime = path.stat().st_mtime
    again, record2 = get_feature_net(dm, CACHE)  # from the cache: not retrained
    assert path.stat().st_mtime == mtime and record2["digest"] == record["digest"]
    assert not any(p.requires_grad for p in again.parameters())  # frozen


def _fid(net, real: torch.Tensor, fake: torch.Tensor) -> float:
    fid, kid = make_fid_kid(net, kid_subset_size=500)
    load_real(fid, kid, extract(net, real))
    return fid_kid_of(fid, kid, fake.float() / 255)["fid"]


def _noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)


@needs_mnist
def test_fid_orders_real_and_noise_and_grows_with_noise(mnist) -> None:
    dm, net, _ = mnist
    test_x, train_x = dm.splits["test"][0], dm.splits["train"][0][:10000]
    same = _fid(net, test_x, train_x)
    noise = _fid(net, test_x, _noise(10000, 0))
    assert noise > 100 * same > 0, (same, noise)  # measured: 6.6 vs 3611
    mixed = []
    for frac in (0.0, 0.25, 0.5):
        x = train_x.clone()
        k = int(frac * x.shape[0])
        x[:k] = _noise(k, 1)
        mixed.append(_fid(net, test_x, x))
    assert mixed[0] < mixed[1] < mixed[2] < noise, mixed


@needs_mnist
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU features
def test_torchmetrics_fid_matches_numpy_scipy(mnist) -> None:
    dm, net, _ = mnist
    real, fake = dm.splits["test"][0][:3000], dm.splits["train"][0][:3000].clone()
    fake[:1000] = _noise(1000, 2)  # a clearly non-zero distance
    fr, ff = extract(net, real).double().numpy(), extract(net, fake).double().numpy()
    mu1, mu2 = fr.mean(0), ff.mean(0)
    c1, c2 = np.cov(fr, rowvar=False), np.cov(ff, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    want = float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))
    assert _fid(net, real, fake) == pytest.approx(want, rel=1e-3, abs=1e-3)


class Oracle(torch.nn.Module):
    """A 'generator' that returns real test images: of the asked class, or the first n;
    its reconstructions are the images themselves, or with ``shift``, their neighbours'
    in the batch (the wrong digit for most)."""

    data_shape = (1, 8, 8)

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        self.x, self.y = x.float() / 255, y
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.shift = 0

    def preprocess(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return x.float() / 255

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return x.roll(self.shift, 0)

    @property
    def device(self) -> torch.device:
        return self.w.device

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self.x[torch.arange(n) % self.x.shape[0]]

    def sample_conditional(self, labels: torch.Tensor, generator=None) -> torch.Tensor:
        idx = [int(torch.nonzero(self.y == c)[i % 10]) for i, c in enumerate(labels.tolist())]
        return self.x[idx]


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_only_rank_zero_may_train_the_feature_net(tmp_path, monkeypatch, rank) -> None:
    """Rank 0 builds a missing net (on its own device) before the barrier; the other ranks
    only read the cache after it. Each rank's copy lands on its own device."""
    import genlab.metrics.features as features

    events: list[str] = []
    real = features.get_feature_net

    def spy(dm, cache_dir, epochs=5, device=None, kind="classifier"):
        events.append(f"get:{'cached' if (Path(cache_dir) / 'digits.pt').exists() else 'new'}")
        assert device == torch.device("cpu")  # the module's device, not "cuda" (GPU 0)
        return real(dm, cache_dir, 1, device=device, kind=kind)

    def barrier(name=None):
        events.append("barrier")
        if rank:  # rank 0 has cached the net by now
            real(dm, tmp_path, 1)

    monkeypatch.setattr(features, "get_feature_net", spy)
    dm = Digits()
    strategy = SimpleNamespace(barrier=barrier)
    trainer = SimpleNamespace(datamodule=dm, world_size=2, global_rank=rank, strategy=strategy)
    module = SimpleNamespace(device=torch.device("cpu"))
    SampleScores(cache_dir=str(tmp_path))._setup(trainer, module)
    if rank == 0:
        assert events == ["get:new", "barrier", "get:cached"]
    else:
        assert events == ["barrier", "get:cached"]


def test_cond_acc_and_fid_of_an_oracle_on_digits(tmp_path, caplog) -> None:
    dm = Digits()
    dm.setup()
    cb = SampleScores(cache_dir=str(tmp_path), n_val=179)
    oracle = Oracle(*dm.splits["val"])
    trainer = SimpleNamespace(datamodule=dm, is_global_zero=True, global_rank=0, world_size=1)
    with caplog.at_level(logging.INFO, logger="genlab.metrics.features"):
        scores = cb.scores(trainer, oracle, "val")
    trained = [
        r.getMessage() for r in caplog.records if "No classifier feature network" in r.getMessage()
    ]
    assert len(trained) == 1 and "training one" in trained[0]  # said once, in one line
    _, record = get_feature_net(dm, tmp_path)
    # The oracle's samples are the validation images themselves: FID ~ 0 (KID's unbiased
    # estimate goes below 0 when both subsets hold the same images), and its
    # class-conditioned samples are classified as well as real validation images.
    assert abs(scores["val/fid"]) < 1e-3 and scores["val/kid"] < 0
    assert scores["val/cond_acc"] >= 0.9 and record["val_acc"] >= 0.9
    # Perfect reconstructions are classified as well as the images; a neighbour's are
    # classified as the neighbour's digit (right about one time in ten).
    assert scores["val/recon_acc"] == pytest.approx(record["val_acc"], abs=0.02)
    oracle.shift = 1
    assert cb.scores(trainer, oracle, "val")["val/recon_acc"] < 0.3
    assert (tmp_path / "digits.pt").is_file() and any((tmp_path / "stats").iterdir())


def test_probes_separate_informative_from_random_latents() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (600,), generator=g)
    informative = torch.nn.functional.one_hot(y, 3).float() + 0.3 * torch.randn(600, 3, generator=g)
    noise = torch.randn(600, 3, generator=g)
    for probe in (linear_probe_acc, knn_acc):
        good = probe(informative[:400], y[:400], informative[400:], y[400:])
        bad = probe(noise[:400], y[:400], noise[400:], y[400:])
        assert good > 0.9 and bad < 0.55, (probe.__name__, good, bad)


def test_eval_py_writes_every_metric_for_a_digits_checkpoint(make_cfg, tmp_path) -> None:
    cfg = make_cfg("trainer.max_epochs=1", "metrics.n_test=100")
    train(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as a Hydra run leaves it
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    p = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={ckpt}", "model.iwae_samples=64"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((ckpt.parent / "eval_best" / "metrics.json").read_text())
    want = {
        "test/loss",
        "test/elbo",
        "test/recon",
        "test/kl",
        "test/nll_iwae",
        "test/fid",
        "test/kid",
        "test/linear_probe_acc",
        "test/knn_acc",
        "test/recon_acc",
    }
    assert want <= set(record["metrics"]), sorted(record["metrics"])
    assert record["hparams"] == {"iwae_samples": 64}
    # The grids the training callbacks draw, by the same code.
    assert set(record["images"]) == {
        "samples.png",
        "reconstructions.png",
        "latent_interpolations.png",
    }
    assert "test/nll_iwae" in p.stdout  # the printed table
    bad = subprocess.run(
        [sys.executable, "eval.py", f"ckpt_path={tmp_path / 'missing.ckpt'}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("genlab: error: ckpt_path=")


def test_train_feature_net_script_caches_the_network(tmp_path) -> None:
    env = {**os.environ, "GENLAB_CACHE": str(tmp_path)}
    cmd = [sys.executable, "scripts/train_feature_net.py", "data=digits", "epochs=2"]
    p = subprocess.run(
        [*cmd, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    last = p.stdout.strip().splitlines()[-1]  # after Hydra's log lines: the one-line report
    assert last.startswith("digits: test accuracy 0.") and last.endswith(
        str(tmp_path / "digits.pt")
    )
    assert (tmp_path / "digits.pt").is_file()


def test_inception_features_need_torch_fidelity() -> None:
    from genlab.errors import ConfigError
    from genlab.metrics.scores import inception_extractor

    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="metrics.features=inception needs torch-fidelity"):
            inception_extractor()
    else:  # installed: the extractor maps grey images to 2048 features
        assert inception_extractor().num_features == 2048
