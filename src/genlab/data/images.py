"""Decoding image files once into a uint8 tensor, and caching the result next to the data.

Every image is opened with PIL, converted to grey (``channels=1``) or RGB, optionally
centre-cropped to a square of ``crop`` pixels (CelebA's faces), scaled so that its shorter
side is ``size`` and centre-cropped to ``size x size``. Files are decoded by a thread pool
(PIL releases the GIL while decoding); this runs once per folder and setting, after which
the cached tensor loads in a second.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genlab.errors import DataNotFoundError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_one(path: Path, size: int, channels: int, crop: int | None = None) -> np.ndarray:
    """(size, size, channels) uint8 pixels of one image file."""
    from PIL import Image, ImageOps
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # photos: the orientation the camera meant
            img = _to_8bit(img).convert("L" if channels == 1 else "RGB")
    except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
        raise DataNotFoundError(
            f"cannot read the image {path} ({type(e).__name__}: {e}): remove or replace it"
        ) from None
    if crop is not None:
        img = TF.center_crop(img, [crop, crop])
    img = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    img = TF.center_crop(img, [size, size])
    return np.asarray(img, dtype=np.uint8).reshape(size, size, channels)


def _to_8bit(img):
    """16-bit and float grey images scaled to 8 bits (PIL's convert would clip them)."""
    from PIL import Image

    if img.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return img
    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
    if img.mode == "F" and a.max() <= 1.0:
        top = 1.0
    return Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")


def decode_all(files: Sequence[Path], size: int, channels: int, crop: int | None = None) -> Tensor:
    """uint8 (N, channels, size, size) images of ``files``, in order."""
    if not files:
        return torch.empty(0, channels, size, size, dtype=torch.uint8)
    t0 = time.perf_counter()
    workers = min(16, os.cpu_count() or 1)
    out = np.empty((len(files), size, size, channels), dtype=np.uint8)  # NHWC while filling
    with ThreadPoolExecutor(workers) as pool:
        for i, pixels in enumerate(
            pool.map(lambda f: decode_one(f, size, channels, crop), files, chunksize=64)
        ):
            out[i] = pixels
    log.info(f"Decoded {len(files)} images in {time.perf_counter() - t0:.1f} s")
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # -> NCHW


def files_digest(files: Sequence[Path], root: Path, settings: str) -> str:
    """A short digest of the file list (relative names, sizes, modification times) and the
    decoding settings: a cache made for other files or settings is never reused."""
    h = hashlib.sha256(settings.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def cache_locations(root: Path, name: str) -> list[Path]:
    """Where a decoded tensor is cached: ``<root>/.genlab-cache/<name>`` when the data's
    folder is writable, else under ``$XDG_CACHE_HOME/genlab`` (~/.cache/genlab)."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "genlab"
    by_path = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    return [root / ".genlab-cache" / name, home / "decoded" / by_path / name]


def cached_tensors(
    locations: Sequence[Path], build: Callable[[], dict[str, Tensor]], key: dict | None = None
) -> dict[str, Tensor]:
    """The tensors saved at the first readable location whose stored key equals ``key``
    (default: the file name, which names the files' digest and the decoding settings),
    else ``build()``'s, saved with the key at the first writable location (atomically: a
    concurrent reader never sees half a file). A truncated, foreign or older file is
    decoded again, never used."""
    from genlab.cache import read_keyed, write_atomic

    key = key if key is not None else {"name": Path(locations[0]).name}
    for path in locations:
        record = read_keyed(path, key, "Decoded-image cache")
        if record is not None and isinstance(record.get("tensors"), dict):
            log.info(f"Decoded images from the cache {path}")
            return record["tensors"]
    tensors = build()
    for path in locations:
        try:
            write_atomic({"key": key, "tensors": tensors}, path)
            log.info(f"Cached the decoded images in {path}")
            break
        except OSError:
            continue  # read-only data folder: the next location
    return tensors
