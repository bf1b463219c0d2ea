"""Sample-quality and representation scores: FID / KID (torchmetrics, with genlab's own
feature network or Inception), conditional accuracy, and probes of frozen codes (linear,
k-NN and one-hidden-layer classifiers)."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genlab.errors import ConfigError

log = logging.getLogger(__name__)


def inception_extractor() -> nn.Module:
    """torchmetrics' Inception-v3 feature extractor (torch-fidelity; downloads its weights)."""
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics.features=inception needs torch-fidelity and its Inception weights: "
            "pip install torch-fidelity (weights download on first use), or use "
            "metrics.features=genlab"
        ) from None
    from torchmetrics.image.fid import NoTrainInceptionV3

    net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    net.num_features = 2048
    return _GreyToRGB(net)


class _GreyToRGB(nn.Module):
    """Feeds [0, 1] images of any channel count to Inception as uint8 RGB."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.num_features = net.num_features

    def forward(self, x: Tensor) -> Tensor:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return self.net((x.clamp(0, 1) * 255).to(torch.uint8))


def make_fid_kid(
    extractor: nn.Module, kid_subset_size: int = 1000
) -> tuple[FrechetInceptionDistance, KernelInceptionDistance]:
    """torchmetrics' FID and KID on ``extractor``'s features of [0, 1] float images.

    Real statistics are not recomputed each time: fill them with :func:`set_real`.
    """
    fid = FrechetInceptionDistance(feature=extractor, normalize=True, reset_real_features=False)
    warnings.filterwarnings("ignore", message=".*will save all extracted features in buffer")
    kid = KernelInceptionDistance(
        feature=extractor,
        normalize=True,
        reset_real_features=False,
        subset_size=kid_subset_size,
        subsets=50,
    )
    return fid, kid


def set_real(fid: FrechetInceptionDistance, kid: KernelInceptionDistance, feats: Tensor) -> None:
    """Load precomputed real features (N, d) into both metrics' real-data states."""
    f = feats.to(fid.real_features_sum.device).double()
    fid.real_features_sum = f.sum(0)
    fid.real_features_cov_sum = f.T @ f
    fid.real_features_num_samples = torch.tensor(f.shape[0], device=f.device)
    kid.real_features = [feats.to(fid.real_features_sum.device).float()]


@torch.no_grad()
def extract(extractor: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Features (N, d) of images x (uint8, or floats in [0, 1]), in batches."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size]
        out.append(extractor(b.float() / 255 if b.dtype == torch.uint8 else b).float())
    return torch.cat(out)


def real_features(
    extractor: nn.Module,
    x: Tensor,
    cache_file: Path | None,
    batch_size: int = 500,
) -> Tensor:
    """Features of the real images x, read from / written to ``cache_file``."""
    if cache_file is not None and cache_file.exists():
        try:
            feats = torch.load(cache_file, map_location="cpu", weights_only=True)
            if isinstance(feats, Tensor) and feats.shape[0] == x.shape[0]:
                return feats
        except Exception:  # noqa: BLE001 - a truncated or foreign cache: recompute it
            log.warning(f"Real-feature cache {cache_file} is unreadable: recomputing it")
    feats = extract(extractor, x, batch_size).cpu()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp-{os.getpid()}")  # DDP ranks may write at once
        torch.save(feats, tmp)
        tmp.replace(cache_file)
    return feats


@torch.no_grad()
def fid_kid_of(
    fid: FrechetInceptionDistance,
    kid: KernelInceptionDistance,
    fake: Tensor,
    batch_size: int = 500,
    n_total: int | None = None,
) -> dict[str, float]:
    """FID and KID (mean, std over subsets) of [0, 1] images ``fake`` against the loaded
    real statistics; the metrics are reset (real states kept) afterwards. Under DDP each
    rank passes its share and ``n_total``, the number of images over all ranks."""
    fid.reset()
    kid.reset()
    for i in range(0, fake.shape[0], batch_size):
        b = fake[i : i + batch_size].float().clamp(0, 1)
        fid.update(b, real=False)
        kid.update(b, real=False)
    n = n_total or min(fake.shape[0], sum(f.shape[0] for f in kid.real_features))
    kid.subset_size = min(kid.subset_size, n)
    kid_mean, kid_std = kid.compute()
    out = {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
    fid.reset()
    kid.reset()
    return out


@torch.no_grad()
def generate(
    model: nn.Module, n: int, seed: int = 0, batch_size: int = 500, **kwargs: Any
) -> Tensor:
    """n samples of ``model.sample(..., **kwargs)`` in [0, 1], with fixed noise
    (comparable across epochs)."""
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(seed)
    to_image = getattr(model, "to_image", lambda x: x.clamp(0, 1))
    chunks = [
        to_image(model.sample(min(batch_size, n - i), generator=g, **kwargs)).float()
        for i in range(0, n, batch_size)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def classify(extractor_net: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Predicted classes (N,) of [0, 1] / uint8 images by a FeatureNet's classifier head."""
    return torch.cat(
        [
            extractor_net.logits(x[i : i + batch_size]).argmax(1)
            for i in range(0, x.shape[0], batch_size)
        ]
    )


@torch.no_grad()
def reconstruction_accuracy(
    model: nn.Module,
    extractor_net: nn.Module,
    x: Tensor,
    y: Tensor,
    seed: int = 0,
    batch_size: int = 1000,
) -> float:
    """Fraction of uint8 images x (N, C, H, W) whose reconstruction ``model.reconstruct``
    the feature network classifies as their label y (N,): does the round trip through
    the code keep the class? The model must be in eval mode."""
    dev = next(model.parameters()).device
    to_image = getattr(model, "to_image", lambda t: t.clamp(0, 1))
    hits = torch.zeros((), device=dev)
    for i in range(0, x.shape[0], batch_size):
        b, lab = x[i : i + batch_size].to(dev), y[i : i + batch_size].to(dev)
        g = torch.Generator(device=dev).manual_seed(seed + i)  # fixed dequantisation noise
        r = to_image(model.reconstruct(model.preprocess(b, g))).float()
        hits += (extractor_net.logits(r).argmax(1) == lab).sum()
    return float(hits) / x.shape[0]


@torch.no_grad()
def encode_all(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Frozen latents (N, d) of uint8 images: the encoder's mean (VAE) or code (AE)."""
    out = []
    for i in range(0, x.shape[0], batch_size):
        b = x[i : i + batch_size]
        g = torch.Generator(device=b.device).manual_seed(i)
        z = model.encode(model.preprocess(b, g))
        out.append((z[0] if isinstance(z, tuple) else z).float().flatten(1))
    return torch.cat(out)


def linear_probe_acc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor) -> float:
    """Accuracy of multinomial logistic regression on standardised frozen latents."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(z_train.cpu().numpy())
    clf = LogisticRegression(max_iter=500)
    clf.fit(scaler.transform(z_train.cpu().numpy()), y_train.cpu().numpy())
    return float(clf.score(scaler.transform(z_test.cpu().numpy()), y_test.cpu().numpy()))


@torch.no_grad()
def knn_acc(z_train: Tensor, y_train: Tensor, z_test: Tensor, y_test: Tensor, k: int = 5) -> float:
    """Accuracy of a k-nearest-neighbour vote (Euclidean) on frozen latents."""
    correct = 0
    classes = int(max(y_train.max(), y_test.max())) + 1
    for i in range(0, z_test.shape[0], 1000):
        d = torch.cdist(z_test[i : i + 1000], z_train)  # (b, N_train)
        nn_labels = y_train[d.topk(min(k, z_train.shape[0]), largest=False).indices]  # (b, k)
        votes = torch.nn.functional.one_hot(nn_labels, classes).sum(1)  # (b, classes)
        correct += int((votes.argmax(1) == y_test[i : i + 1000]).sum())
    return correct / z_test.shape[0]


def mlp_probe_acc(
    z_train: Tensor,
    y_train: Tensor,
    z_test: Tensor,
    y_test: Tensor,
    hidden: int = 200,
    dropout: float = 0.1,
    steps: int = 3000,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Accuracy of a one-hidden-layer classifier (``hidden`` ReLU units, dropout) on
    standardised frozen latents, as Deep InfoMax's non-linear probe: Adam (lr 1e-3),
    ``steps`` mini-batch steps, on the latents' device."""
    # Test and validation loops run in inference mode: leave it to train (clones are
    # ordinary tensors autograd may save).
    with torch.inference_mode(False), torch.enable_grad():
        return _fit_mlp_probe(
            *(t.clone() for t in (z_train, y_train, z_test, y_test)),
            hidden, dropout, steps, batch_size, seed,
        )  # fmt: skip


def _fit_mlp_probe(z_train, y_train, z_test, y_test, hidden, dropout, steps, batch_size, seed):
    mean, std = z_train.mean(0), z_train.std(0).clamp_min(1e-6)
    a, b = (z_train - mean) / std, (z_test - mean) / std  # (N, d)
    classes = int(max(y_train.max(), y_test.max())) + 1
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the initial weights and dropout masks
        layers = [nn.Linear(a.shape[1], hidden), nn.ReLU(), nn.Dropout(dropout)]
        net = nn.Sequential(*layers, nn.Linear(hidden, classes)).to(a.device)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        for _ in range(steps):
            idx = torch.randint(a.shape[0], (batch_size,), generator=g).to(a.device)
            loss = nn.functional.cross_entropy(net(a[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b[i : i + 4096]).argmax(1) for i in range(0, b.shape[0], 4096)])
    return float((pred == y_test).float().mean())


def probe_scores(
    model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor]
) -> dict[str, float]:
    """Linear, 5-NN and MLP probe accuracies of ``model.encode`` on (images, labels) pairs
    of a training and a test split: {"linear_probe_acc", "knn_acc", "mlp_probe_acc"}.
    The model must be in eval mode; codes are the encoder's mean (VAE) or code (AE)."""
    dev = next(model.parameters()).device
    x_tr, y_tr = (t.to(dev) for t in train)
    x_te, y_te = (t.to(dev) for t in test)
    z_tr, z_te = encode_all(model, x_tr), encode_all(model, x_te)
    return {
        "linear_probe_acc": linear_probe_acc(z_tr, y_tr, z_te, y_te),
        "knn_acc": knn_acc(z_tr, y_tr, z_te, y_te),
        "mlp_probe_acc": mlp_probe_acc(z_tr, y_tr, z_te, y_te),
    }
