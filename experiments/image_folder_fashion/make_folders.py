"""Write Fashion-MNIST training images as image files, in the two layouts data=image_folder
reads: class sub-folders (grey PNG, 28 x 28) and a flat folder without labels (RGB JPEG,
scaled to 36 x 36, so that the run's data.size=32 centre-crops them).

    python experiments/image_folder_fashion/make_folders.py <GENLAB_DATA> <out folder> [n]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torchvision


def main(data_dir: str, out: str, n: int = 6000) -> None:
    ds = torchvision.datasets.FashionMNIST(data_dir, train=True)
    root = Path(out)
    for i in range(n):
        img, label = ds[i]
        folder = root / "classes" / ds.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.png")
        (root / "flat").mkdir(parents=True, exist_ok=True)
        img.convert("RGB").resize((36, 36)).save(root / "flat" / f"{i:05d}.jpg", quality=95)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:4]))
