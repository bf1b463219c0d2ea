"""Spread of the one-probe Hutchinson bits/dim per image: 4 probes on the first 40 test
images (exact ODE likelihood otherwise as in the run's test pass).

    python experiments/flow_matching_mnist/hutchinson_variance.py <best.ckpt> <data dir>
"""

import json
import sys
import time

import torch

from genlab.data import MNIST
from genlab.models import FlowMatching

IMAGES, PROBES = 40, 4

torch.manual_seed(0)
model = FlowMatching.load_from_checkpoint(sys.argv[1], hutchinson_samples=PROBES).eval()
data = MNIST(data_dir=sys.argv[2], download=False)
data.setup("test")
x, y = data.splits["test"][0][:IMAGES], data.splits["test"][1][:IMAGES]
start = time.time()
with torch.inference_mode():
    out = model.likelihood_metrics([x, y], 0)  # per-image tensors (IMAGES,)
res = {k: float(v.mean()) for k, v in out.items()}
std = out["bpd_probe_std"]
res["per_image_bpd_std_min_max"] = [float(std.min()), float(std.max())]
res.update(images=IMAGES, probes=PROBES, seconds=time.time() - start)
print(json.dumps(res))
with open("hutchinson_variance.json", "w") as f:
    json.dump(res, f, indent=2)
