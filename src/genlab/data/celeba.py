"""CelebA aligned faces through torchvision's CelebA class: ``data=celeba``.

202,599 face images (178 x 218) with the official partition: 162,770 train / 19,867
validation / 19,962 test. Each is centre-cropped to ``crop`` x ``crop`` (140: the face,
little background) and scaled to ``size`` (64), decoded once into uint8 tensors (64 x 64:
2.5 GB in memory) and cached in ``<data_dir>/celeba/.genlab-cache/``. No labels by default;
``label=<attribute>`` (e.g. ``Male``, ``Smiling``) makes one of the 40 binary attributes
the class label (2 classes), for conditional models and probes.

torchvision downloads from Google Drive, which often refuses (download quotas); the error
then says which files to fetch by hand and where to put them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from genlab.checks import PositiveInt, Seed, check_args
from genlab.data.base import Binarize, InMemoryDataModule
from genlab.data.images import cache_locations, cached_tensors, decode_all
from genlab.errors import ConfigError, DataNotFoundError

log = logging.getLogger(__name__)

SPLITS = {"train": "train", "val": "valid", "test": "test"}  # genlab -> torchvision names
FILES = (
    "img_align_celeba.zip (unzipped to img_align_celeba/), list_eval_partition.txt, "
    "list_attr_celeba.txt, identity_CelebA.txt, list_bbox_celeba.txt, "
    "list_landmarks_align_celeba.txt"
)
SITE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


class CelebA(InMemoryDataModule):
    """CelebA faces, ``size`` x ``size`` RGB from a centred ``crop`` x ``crop`` square."""

    dataset = torchvision.datasets.CelebA
    download_size = "1.4 GB (1.34 GB of aligned JPEGs, 30 MB of annotations)"

    def __init__(
        self,
        data_dir: str = "data",
        download: bool = True,
        size: PositiveInt = 64,
        crop: PositiveInt = 140,
        label: str | None = None,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 500,
        binarize: Binarize = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "data")
        super().__init__(batch_size, eval_batch_size, binarize, split_seed, shuffle_seed)
        if crop > 178:
            raise ConfigError(f"data.crop={crop} is wider than CelebA's 178-pixel images")
        self.data_dir, self.download = str(data_dir), download
        self.size, self.crop, self.label = size, crop, label
        self.data_shape = (3, size, size)
        self.num_classes = 2 if label else 0

    @property
    def files(self) -> Path:
        return Path(self.data_dir).expanduser().resolve() / "celeba"

    @property
    def cache_key(self) -> str:
        """Names this data set and decoding in caches (feature networks, real features)."""
        return f"celeba-{self.size}px-crop{self.crop}"

    def _open(self, split: str, download: bool = False) -> Any:
        return self.dataset(self.data_dir, split=split, target_type="attr", download=download)

    def prepare_data(self) -> None:
        """Check the files are there, downloading them once if allowed (rank 0 only)."""
        try:
            self._open("all")
            return
        except Exception:  # noqa: BLE001 - missing or corrupted: download or say what to do
            pass
        manual = f"download {FILES} from {SITE} into {self.files}"
        if not self.download:
            raise DataNotFoundError(
                f"CelebA not found in {self.files} and data.download=false: {manual}, "
                "or set data.download=true"
            )
        log.info(f"Downloading CelebA ({self.download_size}) into {self.files}")
        try:
            self._open("all", download=True)
        except Exception as e:  # noqa: BLE001 - Google Drive quotas, no network, ...
            detail = " ".join(f"{type(e).__name__}: {e}".split())[:200]
            raise DataNotFoundError(
                f"CelebA's automatic download (Google Drive) failed ({detail}): {manual}"
            ) from None

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        try:
            sets = {k: self._open(v) for k, v in SPLITS.items()}
        except Exception:  # noqa: BLE001 - missing: download, or one clear line
            self.prepare_data()
            sets = {k: self._open(v) for k, v in SPLITS.items()}
        names = list(sets["train"].attr_names)
        column = None
        if self.label:
            if self.label not in names:
                raise ConfigError(
                    f"data.label={self.label!r} is not a CelebA attribute: choose one of "
                    f"{', '.join(n for n in names if n)}"
                )
            column = names.index(self.label)
        images = self.files / "img_align_celeba"

        def decode() -> dict[str, Tensor]:
            return {
                k: decode_all([images / f for f in ds.filename], self.size, 3, self.crop)
                for k, ds in sets.items()
            }

        name = f"{self.size}px-crop{self.crop}-n{sum(len(ds.filename) for ds in sets.values())}.pt"
        x = cached_tensors(cache_locations(self.files, name), decode)
        out = {}
        for k, ds in sets.items():
            y = ds.attr[:, column].long() if column is not None else torch.zeros(len(ds.filename))
            out[k] = (x[k], y.long())
        return out
