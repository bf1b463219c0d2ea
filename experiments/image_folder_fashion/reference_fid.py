"""Scale for FID / KID in a folder's feature space: real training images against the
real test images (the floor a perfect sampler reaches with this many images) and
uniform noise against them, in the same cached feature network a run used.

    GENLAB_CACHE=<cache> python experiments/image_folder_fashion/reference_fid.py \
        <folder> <size> <channels> <classifier|autoencoder>
"""

from __future__ import annotations

import json
import os
import sys

import torch

from genlab.data import ImageFolder
from genlab.metrics.features import get_feature_net
from genlab.metrics.scores import extract, fid_kid_of, make_fid_kid, set_real


def main(folder: str, size: int, channels: int, kind: str) -> dict[str, float]:
    dm = ImageFolder(folder, size=size, channels=channels)
    dm.setup()
    net, record = get_feature_net(dm, os.environ["GENLAB_CACHE"], kind=kind)
    test = dm.splits["test"][0]
    n = test.shape[0]
    fid, kid = make_fid_kid(net, kid_subset_size=1000)
    out = {"n": n, "feature_net": {k: v for k, v in record.items() if k != "data_shape"}}
    set_real(fid, kid, extract(net, test))
    out["train_vs_test"] = fid_kid_of(fid, kid, dm.splits["train"][0][:n].float() / 255)
    g = torch.Generator().manual_seed(0)
    out["noise_vs_test"] = fid_kid_of(fid, kid, torch.rand(test.shape, generator=g))
    return out


if __name__ == "__main__":
    a = sys.argv[1:]
    print(json.dumps(main(a[0], int(a[1]), int(a[2]), a[3]), indent=2))
