"""Latent Langevin sampling (DDLS) of a GAN trained on eight Gaussians: how close the
samples are to the data before and after k steps, and a figure of both.

    python experiments/gan_langevin_toy2d/measure.py <run>/checkpoints/last.ckpt [out.png]
"""

import math
import sys

import torch

from genlab.models import GAN

model = GAN.load_from_checkpoint(sys.argv[1], map_location="cpu").eval()
angle = torch.arange(8) * math.pi / 4
modes = 2.5 * torch.stack([angle.cos(), angle.sin()], 1)  # data: N(mode, 0.2^2 I), equal weights


def log_density(x: torch.Tensor) -> torch.Tensor:
    """log p_data(x) under the true mixture: (N,)."""
    d2 = torch.cdist(x, modes).pow(2)  # (N, 8)
    return torch.logsumexp(-d2 / (2 * 0.2**2) - math.log(2 * math.pi * 0.2**2), 1) - math.log(8)


def row(name: str, x: torch.Tensor) -> str:
    d = torch.cdist(x, modes).min(1)
    counts = torch.bincount(d.indices, minlength=8)
    return (
        f"| {name} | {float(d.values.mean()):.3f} | {float(log_density(x).mean()):.2f} "
        f"| {int(counts.min())} / {int(counts.max())} |"
    )


g = torch.Generator().manual_seed(0)
data = modes[torch.randint(0, 8, (10000,), generator=g)] + 0.2 * torch.randn(10000, 2, generator=g)
print("| samples (10,000) | distance to the nearest mode | log p_data(x) | per mode, min / max |")
print("| --- | ---: | ---: | ---: |")
print(row("data", data))
drawn = {}
for steps, eps in ((0, 0.01), (25, 0.01), (100, 0.01), (300, 0.01), (100, 0.05)):
    model.hparams.langevin_step_size = eps
    drawn[steps, eps] = model.sample(10000, torch.Generator().manual_seed(1), langevin_steps=steps)
    print(row(f"G(z), {steps} Langevin steps of {eps}", drawn[steps, eps]))

if len(sys.argv) > 2:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6), dpi=120, sharex=True, sharey=True)
    for ax, (title, x) in zip(
        axes,
        (
            ("data", data),
            ("GAN samples", drawn[0, 0.01]),
            ("after 100 Langevin steps", drawn[100, 0.01]),
        ),
        strict=True,
    ):
        ax.scatter(*x[:3000].T, s=1, alpha=0.3)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(sys.argv[2])
