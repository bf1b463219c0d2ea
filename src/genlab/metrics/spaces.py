"""Feature spaces for the sample scores and their real-image features, cached by what
they were computed from.

A :class:`FeatureSpace` is a frozen network from images (uint8, or [0, 1] floats) to
(N, d) features with a name (``classifier``, ``autoencoder``, ``inception``: the score
names carry it as a suffix, see ``SUFFIX``) and a ``key`` that identifies the network (a
digest of its weights, or of the Inception file and preprocessing).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from genlab.cache import file_lock, read_keyed, tensor_digest, write_atomic
from genlab.metrics.features import SUFFIX, get_feature_net
from genlab.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class FeatureSpace:
    name: str  # classifier | autoencoder | inception
    net: nn.Module  # images (B, C, H, W) -> (B, d)
    key: str  # identity of the network, for caches
    record: dict = field(default_factory=dict)  # a genlab net's accuracy, epochs, ...
    batch_size: int = 1000  # images per call

    @property
    def suffix(self) -> str:
        return SUFFIX[self.name]

    def to(self, device: torch.device) -> FeatureSpace:
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.no_grad()
    def features(self, x: Tensor, progress: Progress | None = None, scale: int = 1) -> Tensor:
        """(N, d) float features of images x (uint8 or [0, 1]), in batches on the net's
        device; each batch counts ``scale`` times its size towards ``progress`` (under
        DDP: every rank does as much)."""
        out = []
        for i in range(0, x.shape[0], self.batch_size):
            b = x[i : i + self.batch_size].to(self.device)
            # genlab's nets take [0, 1] floats; Inception rounds those to 8-bit values.
            out.append(self.net(b.float() / 255 if b.dtype == torch.uint8 else b).float())
            if progress is not None:
                progress.update(b.shape[0] * scale)
        if not out:
            return torch.zeros(0, getattr(self.net, "num_features", 0), device=self.device)
        return torch.cat(out)


def genlab_space(
    kind: str, datamodule, cache_dir: str | Path, epochs: int, device=None
) -> FeatureSpace:
    """genlab's per-data-set network (``classifier`` or ``autoencoder``), cached."""
    net, record = get_feature_net(datamodule, cache_dir, epochs, device, kind)
    return FeatureSpace(kind, net, f"genlab-{kind}-{record['digest']}", record)


def inception_space(
    weights: str | None = None, batch_size: int | None = None, net: nn.Module | None = None
) -> FeatureSpace:
    """Inception-v3 pool features (:mod:`genlab.metrics.inception`); ``net``: an
    ``InceptionFeatures`` already loaded (else one is loaded from ``weights``)."""
    from genlab.metrics.inception import InceptionFeatures

    net = net if net is not None else InceptionFeatures(weights)
    return FeatureSpace("inception", net, net.key, batch_size=batch_size or 50)


def real_cache_path(cache_dir: str | Path, data: str, split: str, key: dict) -> Path:
    short = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / "stats" / f"{data}-{split}-n{key['n']}-{short}.pt"


def real_key(space: FeatureSpace, x: Tensor) -> dict:
    """What real features depend on: the feature network and the exact images."""
    return {"space": space.key, "images": tensor_digest(x), "n": int(x.shape[0])}


def load_real(path: Path, key: dict) -> Tensor | None:
    """Cached real features for ``key``, or None (missing, unreadable, other images)."""
    record = read_keyed(path, key, "Real-feature cache")
    feats = record.get("features") if record else None
    if record is not None and not (isinstance(feats, Tensor) and feats.shape[0] == key["n"]):
        log.warning(
            f"Real-feature cache {path} holds no features for {key['n']} images: rebuilding"
        )
        return None
    return feats


def save_real(path: Path, key: dict, feats: Tensor) -> None:
    with file_lock(path, "real-feature cache"):
        write_atomic({"key": key, "features": feats.cpu()}, path)
