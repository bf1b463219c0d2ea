"""In-memory data modules: decode once into uint8 tensors on the device, batch by index."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor

from genlab.checks import PositiveInt, Seed, check_args

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Binarize = Literal["static", "threshold"] | None


class TensorBatches:
    """Batches ``(x[idx], y[idx], idx)`` cut from tensors by index: a DataLoader without
    workers. ``idx`` (long (B,)) are the rows of the split, for models that keep one
    parameter per training example (GLO's latent codes) or count images (``-1``: padding).

    Shuffled batches use a permutation drawn on the tensors' device from ``seed`` plus the
    current epoch (``epoch_fn``), so every epoch differs and every run repeats. Under
    several processes each rank takes every ``world_size``-th index of the (padded)
    permutation, as ``DistributedSampler`` does: equal batch counts on every rank.

    Unshuffled (evaluation) batches are the batches of one process, dealt out whole:
    rank r gets batches r, r + world_size, ..., so each batch holds the same images and
    the seeded evaluation noise of global batch ``batch_idx * world_size + rank`` (see
    ``GenlabModule.eval_batch_idx``) is the one a single process draws. A rank short of
    a batch gets a copy of its last one with ``idx = -1``, which the models' evaluation
    steps weigh 0: every image counts once, and every rank runs as many steps.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        epoch_fn: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(x.shape[0] / world_size)

    def __len__(self) -> int:
        if not self.shuffle:
            return math.ceil(math.ceil(self.x.shape[0] / self.batch_size) / self.world_size)
        return math.ceil(self.per_rank / self.batch_size)

    def _indices(self) -> Tensor:
        n, device = self.x.shape[0], self.x.device
        g = torch.Generator(device=device)
        g.manual_seed(self.seed * 1_000_003 + self.epoch_fn())
        idx = torch.randperm(n, generator=g, device=device)
        if self.world_size > 1:
            pad = self.per_rank * self.world_size - n
            idx = torch.cat([idx, idx[:pad]])[self.rank :: self.world_size]
        return idx

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        if not self.shuffle:
            yield from self._eval_batches()
            return
        idx = self._indices()
        for i in range(0, idx.shape[0], self.batch_size):
            j = idx[i : i + self.batch_size]
            yield self.x[j], self.y[j], j

    def _eval_batches(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        n, b = self.x.shape[0], self.batch_size
        starts = list(range(0, n, b))[self.rank :: self.world_size]
        for s in starts:
            j = torch.arange(s, min(s + b, n), device=self.x.device)
            yield self.x[s : s + b], self.y[s : s + b], j
        if len(starts) < len(self) and n:  # padding: weighed 0 by the evaluation steps
            s = starts[-1] if starts else 0
            x, y = self.x[s : s + b], self.y[s : s + b]
            yield x, y, torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)


class InMemoryDataModule(pl.LightningDataModule):
    """Base of every genlab data module.

    Subclasses implement ``load() -> {"train"|"val"|"test": (x uint8 (N, C, H, W),
    y long (N,))}`` and set ``data_shape`` and ``num_classes``. This class validates the
    sizes, applies static / threshold binarisation once, moves the splits to the
    training device on first use and serves :class:`TensorBatches`.
    """

    data_shape: tuple[int, int, int]
    num_classes: int

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        binarize: Binarize = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "data")
        super().__init__()
        self.batch_size = batch_size
        self.train_batch_size: int | None = None  # genlab.steps: k x batch_size per batch
        self.eval_batch_size = eval_batch_size
        self.binarize = binarize
        self.split_seed = split_seed
        self.shuffle_seed = shuffle_seed
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self._on_device: dict[str, tuple[Tensor, Tensor]] = {}

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load()
        if self.binarize == "static":
            # One fixed Bernoulli draw per pixel (MNIST's "statically binarised" variant).
            g = torch.Generator().manual_seed(self.split_seed + 12345)
            splits = {
                k: (_to_255(torch.rand(x.shape, generator=g) < x.float() / 255), y)
                for k, (x, y) in splits.items()
            }
        elif self.binarize == "threshold":
            splits = {k: (_to_255(x >= 128), y) for k, (x, y) in splits.items()}
        self.splits = splits
        sizes = ", ".join(f"{k} {v[0].shape[0]}" for k, v in splits.items())
        log.info(f"{type(self).__name__}: {sizes} examples of shape {tuple(self.data_shape)}")

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _split(self, name: str) -> tuple[Tensor, Tensor]:
        device = self._device()
        cached = self._on_device.get(name)
        if cached is None or cached[0].device != device:
            x, y = self.splits[name]
            # Once per run: the whole split moves to the device (MNIST: 47 MB as uint8).
            cached = self._on_device[name] = (x.to(device), y.to(device))
        return cached

    def _batches(self, name: str, batch_size: int, shuffle: bool) -> TensorBatches:
        x, y = self._split(name)
        trainer = self.trainer
        return TensorBatches(
            x,
            y,
            batch_size,
            shuffle=shuffle,
            seed=self.shuffle_seed,
            epoch_fn=(lambda: trainer.current_epoch) if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )

    def train_dataloader(self) -> TensorBatches:
        return self._batches("train", self.train_batch_size or self.batch_size, shuffle=True)

    def val_dataloader(self) -> TensorBatches:
        return self._batches("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> TensorBatches:
        return self._batches("test", self.eval_batch_size, shuffle=False)


def _to_255(mask: Tensor) -> Tensor:
    return mask.to(torch.uint8) * 255


def split_off(
    x: Tensor, y: Tensor, n_val: int, seed: int
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A seeded random (train, val) partition of (x, y) with n_val validation examples."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    val, train = perm[:n_val].sort().values, perm[n_val:].sort().values
    return (x[train], y[train]), (x[val], y[val])
