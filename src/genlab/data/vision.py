"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's data set classes.

Files live in (and download to) ``data_dir`` in torchvision's layout
(``<data_dir>/MNIST/raw``, ``<data_dir>/cifar-10-batches-py``). They are decoded once into
uint8 tensors; a seeded split of the official training set gives the validation set and
the official test set is the test split.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from genlab.checks import PositiveInt, Seed, check_args
from genlab.data.base import Binarize, InMemoryDataModule, split_off
from genlab.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)


class TorchvisionData(InMemoryDataModule):
    """Base for torchvision image data sets; subclasses set ``dataset`` and ``folder``."""

    dataset: type[torchvision.datasets.VisionDataset]
    folder: str  # where torchvision keeps the files, relative to data_dir
    train_size: int  # size of the official training set, before the validation split
    download_size: str  # said before the first download

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 1000,
        val_size: PositiveInt = 10000,
        binarize: Binarize = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "data")
        super().__init__(batch_size, eval_batch_size, binarize, split_seed, shuffle_seed)
        if val_size >= self.train_size:
            raise ConfigError(
                f"data.val_size={val_size} leaves no training data: "
                f"{self.dataset.__name__} has {self.train_size} training images"
            )
        self.data_dir = str(data_dir)
        self.download = download
        self.val_size = val_size

    @property
    def name(self) -> str:
        return self.dataset.__name__

    @property
    def files(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() / self.folder

    def _open(self, train: bool, download: bool = False) -> Any:
        return self.dataset(self.data_dir, train=train, download=download)

    def prepare_data(self) -> None:
        """Check the files are there, downloading them once if allowed (rank 0 only)."""
        try:
            self._open(train=True)
            self._open(train=False)
            return
        except Exception as e:  # noqa: BLE001 - missing, truncated or foreign files
            problem = e
        present = self.files.is_dir() and any(self.files.iterdir())
        if present and "not found" not in str(problem).lower():
            detail = " ".join(f"{type(problem).__name__}: {problem}".split())[:200]
            raise DataNotFoundError(
                f"{self.name} files in {self.files} are unreadable ({detail}): delete them "
                f"(data.download=true fetches them again) or replace them"
            )
        if not self.download:
            raise DataNotFoundError(
                f"{self.name} not found in {self.files} and data.download=false: "
                f"set data.download=true to fetch it, or point GENLAB_DATA (paths.data_dir) "
                f"at a folder with {self.folder}"
            )
        log.info(f"Downloading {self.name} ({self.download_size}) into {self.files}")
        try:
            self._open(train=True, download=True)
            self._open(train=False, download=True)
        except Exception as e:  # network errors come in many types; report any as one line
            detail = " ".join(f"{type(e).__name__}: {e}".split())
            raise DataNotFoundError(
                f"{self.name} download failed ({detail}): put the files in {self.files} "
                f"or point GENLAB_DATA (paths.data_dir) at a folder that has them"
            ) from None

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            train_set, test_set = self._open(train=True), self._open(train=False)
        except Exception:  # noqa: BLE001 - missing or unreadable: download, or one clear line
            self.prepare_data()
            train_set, test_set = self._open(train=True), self._open(train=False)
        x, y = self._tensors(train_set)
        xs, ys = self._tensors(test_set)
        train, val = split_off(x, y, self.val_size, self.split_seed)
        return {"train": train, "val": val, "test": (xs, ys)}

    def _tensors(self, ds: Any) -> tuple[Tensor, Tensor]:
        """uint8 (N, C, H, W) images and long (N,) labels from a torchvision data set."""
        x = torch.as_tensor(ds.data)
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return x.contiguous(), torch.as_tensor(ds.targets).long()


class MNIST(TorchvisionData):
    """MNIST digits, 28x28 grey: 50k train / 10k val (seeded) / the official 10k test."""

    dataset = torchvision.datasets.MNIST
    folder = "MNIST/raw"
    train_size = 60000
    download_size = "11.6 MB, 4 gzip files"
    data_shape = (1, 28, 28)
    num_classes = 10


class FashionMNIST(TorchvisionData):
    """Fashion-MNIST, 28x28 grey clothing: 50k train / 10k val / the official 10k test."""

    dataset = torchvision.datasets.FashionMNIST
    folder = "FashionMNIST/raw"
    train_size = 60000
    download_size = "30.9 MB, 4 gzip files"
    data_shape = (1, 28, 28)
    num_classes = 10


class CIFAR10(TorchvisionData):
    """CIFAR-10, 32x32 RGB: 45k train / 5k val / the official 10k test."""

    dataset = torchvision.datasets.CIFAR10
    folder = "cifar-10-batches-py"
    train_size = 50000
    download_size = "170 MB, one tar.gz archive"
    data_shape = (3, 32, 32)
    num_classes = 10

    def __init__(self, *args: Any, val_size: PositiveInt = 5000, **kwargs: Any) -> None:
        super().__init__(*args, val_size=val_size, **kwargs)
