"""A per-data-set feature network for FID-style scores, trained here instead of downloaded.

Next to Inception-v3 (the papers' space, :mod:`genlab.metrics.inception`), genlab trains
a small CNN on each data set's training split and uses its 128-unit penultimate layer as
a feature space that fits small images and costs seconds. Two kinds
(``metrics.features``):

- ``classifier`` (data with labels): trained to classify; its head also scores
  conditional samples (cond_acc) and reconstructions (recon_acc). Scores: ``fid``, ``kid``.
- ``autoencoder`` (data without labels, e.g. a flat image folder, CelebA): the same
  encoder trained with a deconvolutional decoder to reconstruct its input (squared
  error). Scores: ``fid_ae``, ``kid_ae``: another feature space, never comparable with
  ``fid``.

Networks are cached as ``<cache_dir>/<data>[_ae]-<hash>.pt`` with their test accuracy
(reconstruction error) and the key they were built from: the digest of the decoded images
of every split (so another binarisation, validation size or split seed trains its own
net), the kind, the budget. Scores computed with different feature nets are not
comparable, so the record also carries a digest of the weights that score caches are keyed
by.
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

from genlab.cache import file_lock, read_keyed, tensor_digest, write_atomic
from genlab.errors import ConfigError

log = logging.getLogger(__name__)

MIN_STEPS = 600  # digits (12 batches an epoch) needs many epochs; MNIST's 4 give 1564 steps
MAX_EPOCHS = 50  # ... but a folder of 80 images gets 50 epochs (50 steps), not 600
VERSION = 2  # of the cache format and training recipe: a change retrains every network


Kind = Literal["classifier", "autoencoder"]
SUFFIX = {"classifier": "", "autoencoder": "_ae", "inception": "_inception"}  # score names


class FeatureNet(nn.Module):
    """[conv -> batch norm -> ReLU -> max-pool] x 2 (32, 64 channels) -> linear -> 128
    features, then a head: classes (``classifier``) or a decoder back to the image
    (``autoencoder``: linear -> 2 transposed convolutions, to (B, C, H, W) logits).

    Input: images in [0, 1], (B, C, H, W) of the data set's shape. ``forward`` returns the
    (B, 128) features (what the scores compare), ``logits`` the class scores.
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
        self.num_features = 4 * width  # the feature dimension
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
    """Train on the train split (Adam, one-cycle schedule) for :func:`budget` epochs;
    return the net and its accuracies (auto-encoder: reconstruction errors, with the
    error of predicting the mean image as a baseline). Works from inside no-grad /
    inference-mode code (a metric's first use)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _train(splits, data_shape, num_classes, epochs, batch_size, lr, seed, device, kind)


def budget(n_train: int, epochs: int, batch_size: int = 128) -> int:
    """Epochs to train: ``epochs``, raised so that small data sets still get ``MIN_STEPS``
    steps (digits: 50 epochs of 12 batches), but never past ``MAX_EPOCHS`` (80 images:
    50 epochs of one batch, not 600)."""
    per_epoch = math.ceil(n_train / batch_size)
    return max(epochs, min(math.ceil(MIN_STEPS / per_epoch), MAX_EPOCHS))


def _train(splits, data_shape, num_classes, epochs, batch_size, lr, seed, device, kind):
    from genlab.progress import Progress

    torch.manual_seed(seed)
    device = torch.device(device)
    x, y = (t.to(device) for t in splits["train"])
    net = FeatureNet(data_shape, num_classes, kind=kind).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    per_epoch = math.ceil(x.shape[0] / batch_size)
    epochs = budget(x.shape[0], epochs, batch_size)
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator(device=device).manual_seed(seed)
    with Progress(f"Training the {kind} feature network", steps, "steps") as progress:
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
                progress.update()
    if kind == "classifier":
        acc = {k: accuracy(net, *(t.to(device) for t in splits[k])) for k in ("val", "test")}
    else:
        acc = {
            f"{k}_mse": reconstruction_mse(net, splits[k][0].to(device)) for k in ("val", "test")
        }
        mean_image = splits["train"][0].float().mean(0) / 255
        acc["baseline_mse"] = float(((splits["test"][0].float() / 255 - mean_image) ** 2).mean())
    return net.eval().cpu(), {**acc, "epochs": epochs}


def data_key(datamodule) -> str:
    """The readable name of a data module in cache file names: its ``cache_key`` (image
    folders: name, size and a digest of the files), else its class name in lower case
    (mnist, digits, ...). What the images are is checked by :func:`data_digest`."""
    return getattr(datamodule, "cache_key", None) or type(datamodule).__name__.lower()


def data_digest(datamodule) -> str:
    """SHA-256 of every split's images and labels as the data module decoded them (after
    binarisation, the validation split's size and seed, ...): what a feature network was
    trained on. Computed once per data module."""
    digest = getattr(datamodule, "_genlab_digest", None)
    if digest is None:
        datamodule.setup()
        tensors = [t for k in sorted(datamodule.splits) for t in datamodule.splits[k][:2]]
        digest = tensor_digest(*tensors)
        datamodule._genlab_digest = digest
    return digest


def net_key(datamodule, kind: Kind, epochs: int, seed: int = 0) -> dict[str, object]:
    """Everything a cached feature network depends on."""
    return {
        "version": VERSION,
        "kind": kind,
        "data": data_key(datamodule),
        "data_shape": list(datamodule.data_shape),
        "images": data_digest(datamodule),
        "epochs": epochs,
        "seed": seed,
    }


def cache_path(cache_dir: str | Path, key: dict[str, object]) -> Path:
    """``<cache_dir>/<data><suffix>-<hash of key>.pt``: one file per distinct key."""
    short = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{key['data']}{SUFFIX[key['kind']]}-{short}.pt"


def weights_digest(net: FeatureNet) -> str:
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()[:16]


def _from_record(record: dict) -> tuple[FeatureNet, dict]:
    net = FeatureNet(record["data_shape"], record["num_classes"], kind=record["kind"])
    net.load_state_dict(record["state_dict"])
    net.eval().requires_grad_(False)
    return net, {k: v for k, v in record.items() if k != "state_dict"}


def get_feature_net(
    datamodule,
    cache_dir: str | Path,
    epochs: int = 5,
    device: torch.device | str | None = None,
    kind: Kind = "classifier",
) -> tuple[FeatureNet, dict]:
    """The cached feature net of this data set (on the CPU, frozen) and its record
    (accuracies, ``digest`` of its weights, the ``key`` it was built from).

    The cache file is found by the key (the decoded images' digest, the kind, the budget)
    and its stored key is checked on load: a net trained on other images (another
    binarisation, validation split, folder...) is never reused, and a truncated or
    foreign file is rebuilt, each said in one log line. A missing net is trained on
    ``device`` (default: the first GPU, else the CPU) under a file lock, so parallel jobs
    train it once."""
    key = net_key(datamodule, kind, epochs)
    path = cache_path(cache_dir, key)
    what = f"{kind} feature network"
    record = read_keyed(path, key, what.capitalize())
    if record is not None:
        return _from_record(record)
    with file_lock(path, what):
        record = read_keyed(path, key, what.capitalize())  # another job may have built it
        if record is None:
            record = _build(datamodule, key, device)
            write_atomic(record, path)
            said = ", ".join(
                f"{k} {record[k]:.4f}" for k in ("test_acc", "test_mse") if k in record
            )
            log.info(f"{what.capitalize()} for {key['data']}: {said} -> {path}")
    return _from_record(record)


def _build(datamodule, key: dict, device) -> dict:
    kind = key["kind"]
    datamodule.setup()
    log.info(
        f"No {kind} feature network for {key['data']} in the cache: training one on its "
        f"train split (cached for later runs)"
    )
    t0 = time.perf_counter()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net, acc = train_feature_net(
        datamodule.splits, datamodule.data_shape, datamodule.num_classes, key["epochs"],
        device=device, kind=kind, seed=key["seed"],
    )  # fmt: skip
    if kind == "classifier":
        quality = {"val_acc": acc["val"], "test_acc": acc["test"]}
    else:
        quality = {k: acc[k] for k in ("val_mse", "test_mse", "baseline_mse")}
    return {
        "key": key,
        "state_dict": net.state_dict(),
        "data_shape": list(net.data_shape),
        "num_classes": net.head[-1].out_features if kind == "classifier" else 0,
        "kind": kind,
        "digest": weights_digest(net),
        "data": key["data"],
        "epochs": acc["epochs"],
        **quality,
        "train_seconds": round(time.perf_counter() - t0, 1),
    }


def quality_problem(record: dict, num_classes: int) -> str | None:
    """Why a feature network's space is too poor to trust its scores, or None: a
    classifier at most a quarter of the way from chance to perfect on the test split, an
    auto-encoder whose error is more than half of predicting the mean image's."""
    if record.get("kind", "classifier") == "classifier":
        chance = 1 / max(num_classes, 2)
        acc = record["test_acc"]
        if acc < chance + 0.25 * (1 - chance):
            return (
                f"the classifier feature network of {record['data']} reaches only "
                f"{100 * acc:.1f}% test accuracy (chance {100 * chance:.1f}%): its features "
                "can hardly tell the classes apart"
            )
        return None
    base = record.get("baseline_mse")
    if base and record["test_mse"] > 0.5 * base:
        return (
            f"the auto-encoder feature network of {record['data']} reconstructs with "
            f"{record['test_mse']:.4f} squared error per pixel, more than half the "
            f"{base:.4f} of predicting the mean image: its features say little"
        )
    return None
