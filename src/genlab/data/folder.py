"""Your own images: ``data=image_folder data.path=<dir>``.

Layouts (hidden files and folders are ignored):

- **class sub-folders** (torchvision's ImageFolder): ``<dir>/<class>/**/<image>``; labels
  are the sorted sub-folder names (two classes at least; one sub-folder means no labels);
- **flat**: ``<dir>/<image>``: no labels (``num_classes = 0``);
- either of them inside ``<dir>/train`` and ``<dir>/test`` (and ``<dir>/val`` or
  ``<dir>/valid``): those are the splits; otherwise a seeded split takes
  ``val_fraction`` and ``test_fraction`` of the images.

Images are decoded once (grey or RGB, scaled and centre-cropped to ``size x size``) into the
same uint8 (N, C, H, W) tensors as every genlab data set and cached in
``<dir>/.genlab-cache/`` (or ``~/.cache/genlab`` when ``<dir>`` is read-only); the cache
is keyed by the file list and the settings, so adding a file decodes again.
"""

from __future__ import annotations

import math
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from genlab.checks import PositiveInt, Seed, check_args
from genlab.data.base import Binarize, InMemoryDataModule, split_off
from genlab.data.images import cache_locations, cached_tensors, decode_all, files_digest, is_image
from genlab.errors import ConfigError, DataNotFoundError

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def scan(folder: Path) -> tuple[list[Path], list[str], list[str]]:
    """(image files, their class names or "" when flat, the sorted class names) of a folder
    in one of the two layouts; one line when it is neither."""
    top = sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    by_class = {
        d.name: sorted(
            p for p in d.rglob("*") if p.is_file() and is_image(p) and _visible(p.parent)
        )
        for d in subs
    }
    by_class = {k: v for k, v in by_class.items() if v}
    if top and by_class:
        raise ConfigError(
            f"data.path: {folder} has images at the top and in the sub-folders "
            f"{', '.join(sorted(by_class)[:5])}: put all of them in class sub-folders "
            "(labels) or all at the top (no labels)"
        )
    if top:
        return top, [""] * len(top), []
    files = [f for name in sorted(by_class) for f in by_class[name]]
    labels = [name for name in sorted(by_class) for _ in by_class[name]]
    return files, labels, sorted(by_class)


class ImageFolder(InMemoryDataModule):
    """A folder of images (class sub-folders or flat), decoded once and cached."""

    def __init__(
        self,
        path: str,
        size: PositiveInt = 64,
        channels: Literal[1, 3] = 3,
        crop: PositiveInt | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache: bool = True,
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 500,
        binarize: Binarize = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "data")
        super().__init__(batch_size, eval_batch_size, binarize, split_seed, shuffle_seed)
        for key, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 < f < 1:
                raise ConfigError(f"data.{key}={f} must lie strictly between 0 and 1")
        if val_fraction + test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction} "
                "leaves no training images: keep their sum below 1"
            )
        self.root = Path(str(path)).expanduser()
        if not self.root.is_dir():
            what = "is not a folder" if self.root.exists() else "does not exist"
            raise DataNotFoundError(
                f"data.path={str(path)!r} {what}: point it at a folder of images "
                "(class sub-folders or flat)"
            )
        self.size, self.channels, self.crop = size, channels, crop
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.cache = cache
        self.classes: list[str] = []  # sub-folder names, once the folder is scanned
        self.data_shape = (channels, size, size)

    # ---- what is in the folder (scanned, not decoded: the model is sized from it) ----
    @cached_property
    def layout(self) -> dict[str, tuple[list[Path], list[str]]]:
        """{split or "all": (files, class names)}; classes are in ``self.classes``."""
        split_dirs = {
            split: next((self.root / n for n in names if (self.root / n).is_dir()), None)
            for split, names in SPLIT_FOLDERS.items()
        }
        if split_dirs["train"] is not None and split_dirs["test"] is not None:
            found = {k: scan(d)[:2] for k, d in split_dirs.items() if d is not None}
        else:
            found = {"all": scan(self.root)[:2]}
        names = sorted({c for _, labels in found.values() for c in labels if c})
        self.classes = names if len(names) >= 2 else []
        n = sum(len(files) for files, _ in found.values())
        if n == 0:
            raise DataNotFoundError(
                f"data.path={str(self.root)!r} has no images (png, jpg, webp, bmp, ...): "
                "put them at the top or in class sub-folders"
            )
        if "all" in found and n < 3:
            raise ConfigError(f"data.path={str(self.root)!r} has {n} images: at least 3 are needed")
        return found

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        """Number of classes (sub-folders); 0 when the images have no labels."""
        _ = self.layout
        return len(self.classes)

    @cached_property
    def digest(self) -> str:
        files = [f for fs, _ in self.layout.values() for f in fs]
        return files_digest(files, self.root, f"{self.size},{self.channels},{self.crop}")

    @property
    def cache_key(self) -> str:
        """Names this folder and decoding in caches (feature networks, real features)."""
        name = self.root.resolve().name
        return f"imagefolder-{name}-{self.size}px{self.channels}c-{self.digest[:8]}"

    # ---- decoding ----
    def _decode(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        index = {c: i for i, c in enumerate(self.classes)}
        for split, (files, labels) in self.layout.items():
            out[f"{split}_x"] = decode_all(files, self.size, self.channels, self.crop)
            out[f"{split}_y"] = torch.tensor([index.get(c, 0) for c in labels], dtype=torch.long)
        return out

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        if self.cache:
            name = f"{self.size}px{self.channels}c-crop{self.crop}-{self.digest}.pt"
            t = cached_tensors(cache_locations(self.root, name), self._decode)
        else:
            t = self._decode()
        # Files are listed class by class; every split is put in a seeded random order so
        # that its first n images (the scores' real images, the probes' training codes)
        # are a random sample, not the first classes.
        g = torch.Generator().manual_seed(self.split_seed)
        if "all_x" not in t:
            splits = {}
            for k in self.layout:
                order = torch.randperm(t[f"{k}_x"].shape[0], generator=g)
                splits[k] = (t[f"{k}_x"][order], t[f"{k}_y"][order])
            if "val" not in splits:  # train/ and test/ only: a seeded val split of train
                x, y = splits["train"]
                n_val = max(1, math.floor(self.val_fraction * x.shape[0]))
                splits["train"], splits["val"] = split_off(x, y, n_val, self.split_seed)
            return splits
        x, y = t["all_x"], t["all_y"]
        n = x.shape[0]
        n_val = max(1, math.floor(self.val_fraction * n))
        n_test = max(1, math.floor(self.test_fraction * n))
        perm = torch.randperm(n, generator=g)
        parts = {
            "val": perm[:n_val],
            "test": perm[n_val : n_val + n_test],
            "train": perm[n_val + n_test :],
        }
        return {k: (x[i], y[i]) for k, i in parts.items()}
