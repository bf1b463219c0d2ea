"""Compare the categorical VAE's gradient estimators at one set of parameters.

    python scripts/estimator_variance.py outputs/<run>/checkpoints/best.ckpt \\
        [--images 100] [--samples 64] [--reference-samples 20000] [--json out.json]

Loads a ``model=gumbel_vae`` checkpoint (no Hydra needed), binarises a fixed batch of
MNIST test images (``$GENLAB_DATA``, else ./data) and, for gumbel, st_gumbel and
reinforce, prints the encoder-gradient variance over ``--samples`` draws (mean over
parameters, as ``train/grad_var``) and ``distance_to_reference``: the distance of its
mean gradient over ``--reference-samples`` draws from an independent REINFORCE mean
(unbiased for the exact objective's gradient) over as many draws, relative to that
reference's norm. REINFORCE's own entry is the noise floor of this comparison: a
relaxed estimator's bias shows only where its distance clearly exceeds that floor.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from genlab.data import MNIST
from genlab.data.transforms import binarize
from genlab.errors import run_script
from genlab.models import GumbelVAE
from genlab.nn.categorical import temperature

ESTIMATORS = ("gumbel", "st_gumbel", "reinforce")


def gradients(model: GumbelVAE, x: torch.Tensor, est: str, n: int, seed: int, tau: float):
    """n independent encoder-gradient estimates on x: (n, P)."""
    params = list(model.encoder.parameters())
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        loss = model.objective(x, est, g, tau=tau)["surrogate"].mean()
        out.append(torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)]))
    return torch.stack(out)


def mean_gradient(model: GumbelVAE, x: torch.Tensor, est: str, n: int, seed: int, tau: float):
    """The mean of n estimates, in chunks of 100 replicas per backward pass: (P,)."""
    reps = 100
    total = None
    g = torch.Generator().manual_seed(seed)
    params = list(model.encoder.parameters())
    xr = x.repeat(reps, 1, 1, 1)
    for _ in range(max(1, n // reps)):
        loss = model.objective(xr, est, g, tau=tau)["surrogate"].mean()
        flat = torch.cat([t.flatten() for t in torch.autograd.grad(loss, params)])
        total = flat if total is None else total + flat
    return total / max(1, n // reps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--reference-samples", type=int, default=20000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_grad_enabled(True)
    model = GumbelVAE.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    hp = model.hparams
    step = torch.load(args.ckpt, map_location="cpu", weights_only=True)["global_step"]
    tau = temperature(step, hp.tau0, hp.tau_min, hp.tau_rate)  # the checkpoint's temperature
    dm = MNIST(data_dir=os.environ.get("GENLAB_DATA", "data"), download=False)
    dm.setup()
    x = binarize(dm.splits["test"][0][: args.images], torch.Generator().manual_seed(0))
    # The reference: REINFORCE is unbiased for the exact objective's gradient.
    ref = mean_gradient(model, x, "reinforce", args.reference_samples, 1, tau)
    results = {"checkpoint_step": step, "tau": tau, "trained_with": hp.estimator}
    for est in ESTIMATORS:
        grads = gradients(model, x, est, args.samples, 2, tau)
        mean = mean_gradient(model, x, est, args.reference_samples, 3, tau)
        results[est] = {
            "grad_var": float(grads.var(0).mean()),
            "distance_to_reference": float((mean - ref).norm() / ref.norm()),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    run_script(main, "estimator_variance.py")
