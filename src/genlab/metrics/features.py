"""A per-data-set feature network for FID-style scores, trained here instead of downloaded.

Inception weights need a download that offline clusters (and our CI) can't make, so genlab
trains a small CNN on each data set's training split and uses its 128-unit penultimate
layer as the feature space. Two kinds (``metrics.features``):

- ``classifier`` (data with labels): trained to classify; its head also scores
  conditional samples (cond_acc) and reconstructions (recon_acc). Scores: ``fid``, ``kid``.
- ``autoencoder`` (data without labels, e.g. a flat image folder, CelebA): the same
  encoder trained with a deconvolutional decoder to reconstruct its input (squared
  error). Scores: ``fid_ae``, ``kid_ae``: another feature space, never comparable with
  ``fid``.

Networks are cached as ``<cache_dir>/<data>.pt`` (``<data>_ae.pt``) with their test
accuracy (reconstruction error); scores computed with different feature nets are not
comparable, so the cache file also carries a digest that score caches are keyed by.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import ConfigError

log = logging.getLogger(__name__)

MIN_STEPS = 600  # digits (12 batches an epoch) needs many epochs; MNIST's 4 give 1564 steps


Kind = Literal["classifier", "autoencoder"]
SUFFIX = {"classifier": "", "autoencoder": "_ae", "inception": "_inception"}  # score names


class FeatureNet(nn.Module):
    """[conv -> batch norm -> ReLU -> max-pool] x 2 (32, 64 channels) -> linear -> 128
    features, then a head: classes (``classifier``) or a decoder back to the image
    (``autoencoder``: linear -> 2 transposed convolutions, to (B, C, H, W) logits).

    Input: images in [0, 1], (B, C, H, W) of the data set's shape. ``forward`` returns the
    (B, 128) features (what torchmetrics' FID/KID call), ``logits`` the class scores.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        kind: Kind = "classifier",
    ) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ConfigError(f"feature networks need images (C, H, W), not {tuple(data_shape)}")
        self.data_shape = tuple(data_shape)
        self.kind = kind
        self.num_features = 4 * width  # read by torchmetrics' FID/KID
        c, h4, w4 = data_shape[0], data_shape[1] // 4, data_shape[2] // 4
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),  # (B, 2 * width * H/4 * W/4): MNIST 64 x 7 x 7
            nn.Linear(2 * width * h4 * w4, self.num_features),
            nn.ReLU(),
        )
        if kind == "classifier":
            self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(self.num_features, num_classes))
        else:  # (B, 128) -> (B, 2w, H/4, W/4) -> (B, w, H/2, W/2) -> (B, C, H', W') logits
            self.head = nn.Sequential(
                nn.Linear(self.num_features, 2 * width * h4 * w4),
                nn.ReLU(),
                nn.Unflatten(1, (2 * width, h4, w4)),
                nn.ConvTranspose2d(2 * width, width, 4, 2, 1),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                nn.ConvTranspose2d(width, c, 4, 2, 1),
            )

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        return self.body(x.float())

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self(x))

    def reconstruct(self, x: Tensor) -> Tensor:
        """Auto-encoder kind: reconstructions in [0, 1], (B, C, H, W) (sizes that are not
        multiples of 4 are interpolated back)."""
        out = torch.sigmoid(self.logits(x))
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


@torch.no_grad()
def reconstruction_mse(net: FeatureNet, x: Tensor, batch_size: int = 1000) -> float:
    """Mean squared error per pixel (images in [0, 1]) of the auto-encoder on uint8 x."""
    net.eval()
    total = sum(
        float(F.mse_loss(net.reconstruct(b), b.float() / 255, reduction="sum"))
        for b in x.split(batch_size)
    )
    return total / x.numel()


@torch.no_grad()
def accuracy(net: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of the classifier on uint8 images x (N, C, H, W) and labels y (N,)."""
    net.eval()
    correct = sum(
        int((net.logits(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, x.shape[0], batch_size)
    )
    return correct / x.shape[0]


def train_feature_net(
    splits: dict[str, tuple[Tensor, Tensor]],
    data_shape: Sequence[int],
    num_classes: int,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    kind: Kind = "classifier",
) -> tuple[FeatureNet, dict[str, float]]:
    """Train on the train split (Adam, one-cycle schedule) for ``epochs`` epochs but at
    least ``MIN_STEPS`` steps (small data sets such as digits); return the net and its
    accuracies (auto-encoder: reconstruction errors). Works from inside no-grad /
    inference-mode code (a metric's first use)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train(splits, data_shape, num_classes, epochs, batch_size, lr, seed, device, kind)


def _train(splits, data_shape, num_classes, epochs, batch_size, lr, seed, device, kind):
    torch.manual_seed(seed)
    device = torch.device(device)
    x, y = (t.to(device) for t in splits["train"])
    net = FeatureNet(data_shape, num_classes, kind=kind).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = math.ceil(x.shape[0] / batch_size)
    epochs = max(epochs, math.ceil(MIN_STEPS / per_epoch))
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator(device=device).manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=g, device=device)
        for i in range(0, x.shape[0], batch_size):
            j = perm[i : i + batch_size]
            if kind == "classifier":
                loss = F.cross_entropy(net.logits(x[j]), y[j])
            else:  # squared error per image, mean over the batch
                target = x[j].float() / 255
                loss = F.mse_loss(net.reconstruct(x[j]), target, reduction="sum") / len(j)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    if kind == "classifier":
        acc = {k: accuracy(net, *(t.to(device) for t in splits[k])) for k in ("val", "test")}
    else:
        acc = {
            f"{k}_mse": reconstruction_mse(net, splits[k][0].to(device)) for k in ("val", "test")
        }
    return net.eval().cpu(), {**acc, "epochs": epochs}


def cache_path(cache_dir: str | Path, data_key: str, kind: Kind = "classifier") -> Path:
    return Path(cache_dir).expanduser() / f"{data_key}{SUFFIX[kind]}.pt"


def save_feature_net(net: FeatureNet, path: Path, info: dict) -> str:
    """Write the net and ``info`` (accuracies, data key); return the weights' digest."""
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()[:16]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "state_dict": net.state_dict(),
            "data_shape": list(net.data_shape),
            "num_classes": net.head[-1].out_features if net.kind == "classifier" else 0,
            "kind": net.kind,
            "digest": digest,
            **info,
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return digest


def load_feature_net(path: Path) -> tuple[FeatureNet, dict]:
    """The cached net (eval mode, frozen) and its record (accuracies, digest, ...)."""
    record = torch.load(path, map_location="cpu", weights_only=True)
    net = FeatureNet(
        record["data_shape"], record["num_classes"], kind=record.get("kind", "classifier")
    )
    net.load_state_dict(record["state_dict"])
    net.eval().requires_grad_(False)
    return net, {k: v for k, v in record.items() if k != "state_dict"}


def data_key(datamodule) -> str:
    """The cache key of a data module: its ``cache_key`` (image folders: name, size and a
    digest of the files), else its class name in lower case (mnist, digits, ...)."""
    return getattr(datamodule, "cache_key", None) or type(datamodule).__name__.lower()


def get_feature_net(
    datamodule,
    cache_dir: str | Path,
    epochs: int = 5,
    device: torch.device | str | None = None,
    kind: Kind = "classifier",
) -> tuple[FeatureNet, dict]:
    """The cached feature net of this data set (on the CPU); trains (and caches) it on
    ``device`` (default: the first GPU, else the CPU) when missing or unreadable (a
    truncated file, another shape), saying so in one log line. Under DDP call it on one
    rank first (as the scores callback does): every rank training its own copy on GPU 0 is
    the hazard this avoids."""
    path = cache_path(cache_dir, data_key(datamodule), kind)
    if path.exists():
        try:
            net, record = load_feature_net(path)
            if tuple(record["data_shape"]) == tuple(datamodule.data_shape):
                return net, record
            problem = f"it is for data of shape {tuple(record['data_shape'])}"
        except Exception as e:  # noqa: BLE001 - any unreadable cache is retrained
            problem = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        log.warning(f"Feature network cache {path} is unusable ({problem}): training a new one")
        path.unlink(missing_ok=True)
    if not path.exists():
        datamodule.setup()
        log.info(
            f"No {kind} feature network for {data_key(datamodule)} in {path.parent}: "
            "training one on its train split (cached for later runs)"
        )
        t0 = time.perf_counter()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        net, acc = train_feature_net(
            datamodule.splits, datamodule.data_shape, datamodule.num_classes, epochs,
            device=device, kind=kind,
        )  # fmt: skip
        quality = (
            {"val_acc": acc["val"], "test_acc": acc["test"]} if kind == "classifier" else
            {"val_mse": acc["val_mse"], "test_mse": acc["test_mse"]}
        )  # fmt: skip
        info = {
            "data": data_key(datamodule),
            "epochs": acc["epochs"],
            **quality,
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        save_feature_net(net, path, info)
        said = ", ".join(f"{k} {v:.4f}" for k, v in quality.items() if k.startswith("test"))
        log.info(f"{kind.capitalize()} feature network for {info['data']}: {said} -> {path}")
    return load_feature_net(path)
