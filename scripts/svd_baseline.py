"""Truncated-SVD (PCA) reconstruction error of a data set's test images: the optimum
of every linear auto-encoder with that code size, and the baseline of the deep
auto-encoder table (``model=dbn``).

    python scripts/svd_baseline.py [--data mnist] [--dims 30] [--json out.json]

Images are grey values in [0, 1]; the principal subspace is fitted on the training
split (mean-centred), and the error is the squared error summed over pixels, averaged
over the test images: the units of ``test/mse`` of ``model=dbn``. Reads
``$GENLAB_DATA`` (else ./data) with the same splits as ``python train.py data=<data>``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from genlab.data import MNIST, Digits, FashionMNIST
from genlab.data.transforms import to_unit

DATA = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "digits": Digits}


def svd_errors(train: torch.Tensor, test: torch.Tensor, dims: list[int]) -> dict[int, float]:
    """{d: mean over test rows of ||x - x_d||^2} for rank-d PCA fitted on train (N, D)."""
    mean = train.mean(0)
    _, _, vt = torch.linalg.svd(train - mean, full_matrices=False)  # rows: principal axes
    out = {}
    for d in dims:
        v = vt[:d].T  # (D, d)
        centred = test - mean
        recon = centred @ v @ v.T
        out[d] = float((centred - recon).pow(2).sum(1).mean())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", choices=sorted(DATA), default="mnist")
    p.add_argument("--dims", type=int, nargs="+", default=[30])
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    kwargs = (
        {}
        if a.data == "digits"
        else {"data_dir": os.environ.get("GENLAB_DATA", "data"), "download": False}
    )
    dm = DATA[a.data](**kwargs)
    dm.setup()
    flat = {k: to_unit(x).flatten(1).double() for k, (x, _) in dm.splits.items()}
    errors = svd_errors(flat["train"], flat["test"], a.dims)
    for d, e in errors.items():
        print(f"{a.data}: rank-{d} truncated SVD, test squared error per image = {e:.3f}")
    if a.json:
        a.json.write_text(json.dumps({"data": a.data, "test_mse": errors}, indent=1))


if __name__ == "__main__":
    main()
