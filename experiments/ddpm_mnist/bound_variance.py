"""Spread of DDPM's stratified bound per image against the exact timestep sum, on the first
test images: log-spaced and equal strata at 10 and 20 strata, several seeded repeats each.

    python experiments/ddpm_mnist/bound_variance.py <best.ckpt> <data dir> [images] [repeats]

Writes bound_variance.json (nats per image; bits/dim = nats / (784 ln 2)) in the working
directory. The EMA denoiser scores, as in the run's test pass.
"""

import json
import math
import sys
import time

import torch

from genlab.data import MNIST
from genlab.models import DDPM

images = int(sys.argv[3]) if len(sys.argv) > 3 else 100
repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 8
model = DDPM.load_from_checkpoint(sys.argv[1], map_location="cpu").eval()
data = MNIST(data_dir=sys.argv[2], download=False)
data.setup("test")
x0 = model.preprocess(data.splits["test"][0][:images])  # (N, 1, 28, 28) bin centres
bits = 784 * math.log(2)
res: dict = {"images": images, "repeats": repeats}
with torch.inference_mode():
    start = time.time()
    exact = model.nll_bound(x0, None, 0, torch.Generator().manual_seed(0))["bound"]  # (N,)
    res["exact"] = {
        "bound_nats": float(exact.mean()),
        "bpd": float(exact.mean()) / bits,
        "se_over_images": float(exact.std() / math.sqrt(images)),
        "seconds": time.time() - start,
    }
    for strata in (10, 20):
        for spacing in ("log", "uniform"):
            start = time.time()
            runs = torch.stack(
                [
                    model.nll_bound(
                        x0, None, strata, torch.Generator().manual_seed(1 + r), spacing
                    )["bound"]
                    for r in range(repeats)
                ]
            )  # (repeats, N)
            means = runs.mean(1)  # each repeat's estimate over the images
            res[f"{spacing}_{strata}"] = {
                "bound_nats_mean_of_repeats": float(means.mean()),
                "bound_nats_min_max_of_repeats": [float(means.min()), float(means.max())],
                # the estimator's own spread per image (repeats of the same image), and
                # the standard error of an N-image estimate from it
                "per_image_std_nats": float(runs.std(0).mean()),
                "std_of_the_n_image_mean_nats": float(means.std()),
                "mean_minus_exact_nats": float(means.mean() - exact.mean()),
                "seconds_per_repeat": (time.time() - start) / repeats,
            }
            print(spacing, strata, res[f"{spacing}_{strata}"], flush=True)
print(json.dumps(res, indent=2))
with open("bound_variance.json", "w") as f:
    json.dump(res, f, indent=2)
