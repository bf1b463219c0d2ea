"""Pictures of a model, as (3, H, W) tensors in [0, 1]: sample, class and reconstruction
grids, latent interpolations, the 2-D latent manifold and class scatter, and density /
sample heat maps of 2-D data. Plain functions of a model and a batch (no Trainer): the
image callbacks and ``eval.py`` draw with the same code.

Models are duck-typed: ``sample(n, generator)``, ``sample_conditional(labels, generator)``,
``reconstruct(x)``, ``filters(n)``, ``encode(x)`` with ``decode(z)`` or a flow's ``flow.inverse``,
``log_prob(x)``, ``trajectory(n, frames, generator)``, ``preprocess(x_uint8, generator)``
and ``to_image(x)`` (model space -> [0, 1]) are used where present.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.utils import make_grid

from genlab.data.transforms import model_images


def to_image(model: nn.Module, x: Tensor, min_size: int = 0) -> Tensor:
    """Model space -> [0, 1] images; tiny ones (8x8 digits) are upscaled, nearest
    neighbour, to at least ``min_size`` pixels a side to stay legible."""
    x = model_images(model, x)
    scale = math.ceil(min_size / x.shape[-1])
    return nn.functional.interpolate(x, scale_factor=scale) if scale > 1 else x


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=model.device).manual_seed(seed)


@torch.no_grad()
def sample_grid(model: nn.Module, n: int, seed: int = 0, min_size: int = 0) -> Tensor:
    """n samples with fixed noise (comparable across epochs), ceil(sqrt(n)) a row."""
    s = to_image(model, model.sample(n, generator=_generator(model, seed)), min_size)
    return make_grid(s, nrow=int(math.ceil(math.sqrt(n))))


@torch.no_grad()
def class_grid(model: nn.Module, per_class: int = 10, seed: int = 0, min_size: int = 0) -> Tensor:
    """One row per class of a conditional model, ``per_class`` samples each."""
    labels = torch.arange(model.hparams.num_classes, device=model.device)
    s = model.sample_conditional(labels.repeat_interleave(per_class), _generator(model, seed))
    return make_grid(to_image(model, s, min_size), nrow=per_class)


@torch.no_grad()
def trajectory_grid(
    model: nn.Module, n: int = 8, frames: int = 10, seed: int = 0, min_size: int = 0
) -> Tensor:
    """The sampling path of an iterative sampler (diffusion, flow matching): one row per
    sample, ``frames`` states from the noise (left) to the sample (right)."""
    path = model.trajectory(n, frames, generator=_generator(model, seed))  # (F, n, C, H, W)
    rows = path.transpose(0, 1).flatten(0, 1)
    return make_grid(to_image(model, rows, min_size), nrow=path.shape[0])


@torch.no_grad()
def filter_grid(model: nn.Module, n: int, min_size: int = 0) -> Tensor:
    """A model's first-layer filters ``model.filters(n)`` (n, C, H, W) in [0, 1]."""
    f = model.filters(n)
    scale = math.ceil(min_size / f.shape[-1])
    f = nn.functional.interpolate(f, scale_factor=scale) if scale > 1 else f
    return make_grid(f, nrow=int(math.ceil(math.sqrt(f.shape[0]))), pad_value=1.0)


@torch.no_grad()
def reconstruction_grid(model: nn.Module, x: Tensor, min_size: int = 0) -> Tensor:
    """Rows of 8 model-space images x (B, ...) alternating with their reconstructions."""
    r = model.reconstruct(x)
    n = x.shape[0] - x.shape[0] % 8 or x.shape[0]
    pairs = torch.stack([to_image(model, x[:n], min_size), to_image(model, r[:n], min_size)])
    rows = pairs.view(2, -1, min(8, n), *pairs.shape[2:]).transpose(0, 1).flatten(0, 2)
    return make_grid(rows, nrow=min(8, n))


def code_of(model: nn.Module, x: Tensor) -> Tensor:
    """The deterministic code of x: (B, d); a VAE's posterior mean, an AE's code, a
    flow's h, a categorical VAE's posterior probabilities."""
    z = model.encode(x)
    return (z[0] if isinstance(z, tuple) else z).flatten(1)


def latent_to_data(model: nn.Module, z: Tensor) -> Tensor:
    """Codes (B, d) -> data space: a flow's inverse, a decoder's mean, a generator."""
    if hasattr(model, "flow"):
        return model.flow.inverse(z)[0].view(-1, *model.data_shape)
    out = model.decode(z)
    return model.mean(out) if hasattr(model, "mean") else out  # GANs decode to data


def has_latent_views(model: nn.Module) -> bool:
    """An encoder and a way back to data space (a decoder or a flow's inverse)."""
    return hasattr(model, "encode") and (hasattr(model, "decode") or hasattr(model, "flow"))


@torch.no_grad()
def interpolation_grid(model: nn.Module, x: Tensor, n_steps: int = 8, min_size: int = 0) -> Tensor:
    """Linear paths in latent space between pairs (x[i], x[P + i]) of 2P model-space
    images: one row per pair, the two originals at its ends -> (3, H', W') grid."""
    p = x.shape[0] // 2
    z = code_of(model, x[: 2 * p])
    t = torch.linspace(0, 1, n_steps, device=z.device).view(1, n_steps, 1)
    path = (1 - t) * z[:p, None] + t * z[p : 2 * p, None]  # (P, n_steps, d)
    imgs = latent_to_data(model, path.flatten(0, 1)).view(p, n_steps, *x.shape[1:])
    rows = torch.cat([x[:p, None], imgs, x[p : 2 * p, None]], 1)  # (P, n_steps + 2, ...)
    return make_grid(to_image(model, rows.flatten(0, 1), min_size), nrow=n_steps + 2)


def prior_quantiles(model: nn.Module, u: Tensor) -> Tensor:
    """Per-dimension quantiles of the model's prior at levels u (n,) -> (n, d): the
    model's own ``prior_quantiles`` where it has one, else the standard normal's."""
    if hasattr(model, "prior_quantiles"):
        return model.prior_quantiles(u)
    q = torch.distributions.Normal(0.0, 1.0).icdf(u)
    return q[:, None].expand(-1, model.hparams.latent_dim)


@torch.no_grad()
def manifold_grid(model: nn.Module, size: int = 20, min_size: int = 0) -> Tensor:
    """A 2-D latent's decoded lattice: z = (Q1(u_j), Q2(u_i)) over the prior's quantiles
    u = (0.5, ..., size - 0.5) / size; z1 grows to the right, z2 upwards."""
    u = (torch.arange(size, device=model.device, dtype=torch.float32) + 0.5) / size
    q = prior_quantiles(model, u)  # (size, 2)
    zz2, zz1 = torch.meshgrid(q[:, 1].flip(0), q[:, 0], indexing="ij")  # top row: high z2
    z = torch.stack([zz1.flatten(), zz2.flatten()], 1)
    return make_grid(to_image(model, latent_to_data(model, z), min_size), nrow=size, padding=0)


# Ten distinguishable class colours (Tableau 10), as 0-255 RGB.
_CLASS_COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip


def scatter_image(z: Tensor, labels: Tensor, size: int = 512, dot: int = 2) -> Tensor:
    """Points z (n, 2) coloured by integer labels, with a class legend: (3, H, W) in
    [0, 1]. Axes span the 0.5-99.5% quantiles (plus a margin); grey lines mark 0."""
    from PIL import Image, ImageDraw
    from torchvision.transforms.functional import pil_to_tensor

    z = z.float().cpu()
    lo = torch.quantile(z, 0.005, dim=0)
    hi = torch.quantile(z, 0.995, dim=0)
    pad = (hi - lo).clamp_min(1e-6) * 0.08
    lo, hi = lo - pad, hi + pad
    pix = ((z - lo) / (hi - lo) * (size - 1)).round().long()  # (n, 2), y pointing up
    legend = 24
    img = Image.new("RGB", (size, size + legend), "white")
    draw = ImageDraw.Draw(img)
    for axis in range(2):  # the z = 0 lines, when in view
        if lo[axis] < 0 < hi[axis]:
            c = int(((0 - lo[axis]) / (hi[axis] - lo[axis]) * (size - 1)).round())
            if axis == 0:  # x = 0: a vertical line
                draw.line([(c, 0), (c, size - 1)], fill=(200, 200, 200))
            else:
                draw.line([(0, size - 1 - c), (size - 1, size - 1 - c)], fill=(200, 200, 200))
    for (px, py), y in zip(pix.tolist(), labels.cpu().tolist(), strict=True):
        if 0 <= px < size and 0 <= py < size:
            color = _CLASS_COLORS[int(y) % len(_CLASS_COLORS)]
            draw.ellipse([px - dot, size - 1 - py - dot, px + dot, size - 1 - py + dot], fill=color)
    classes = sorted({int(y) for y in labels.tolist()})
    step = size // max(len(classes), 1)
    for i, y in enumerate(classes):  # legend: a swatch and the class index
        x0 = i * step + 4
        draw.rectangle([x0, size + 6, x0 + 12, size + 18], fill=_CLASS_COLORS[y % 10])
        draw.text((x0 + 16, size + 6), str(y), fill="black")
    return pil_to_tensor(img).float() / 255.0


# ---- 2-D data ---------------------------------------------------------------------------
def plane_grid(lim: float, res: int, device: torch.device | str = "cpu") -> Tensor:
    """Cell centres of a res x res grid over [-lim, lim]^2, row-major with y first:
    (res * res, 2) points (x, y)."""
    c = (torch.arange(res, device=device) + 0.5) / res * 2 * lim - lim
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.flatten(), yy.flatten()], 1)


_COLORS = torch.tensor(  # a perceptual dark-to-bright ramp (approximately 'magma')
    [
        [0.0, 0.0, 0.02],
        [0.32, 0.07, 0.48],
        [0.72, 0.21, 0.47],
        [0.99, 0.53, 0.38],
        [0.99, 0.99, 0.75],
    ]
)


def heat_map(values: Tensor) -> Tensor:
    """(H, W) values (row 0 = lowest y) -> a (3, H, W) [0, 1] colour image, y pointing up."""
    v = values.float().cpu().flip(0)
    v = (v - v.min()) / (v.max() - v.min()).clamp_min(1e-12) * (len(_COLORS) - 1)
    i = v.floor().long().clamp(max=len(_COLORS) - 2)
    w = (v - i).unsqueeze(-1)
    return ((1 - w) * _COLORS[i] + w * _COLORS[i + 1]).permute(2, 0, 1)


@torch.no_grad()
def density_map(model: nn.Module, lim: float, res: int) -> Tensor:
    """exp(log p) of a 2-D model over [-lim, lim]^2 as a heat map; models whose
    log_prob is costly (an ODE solve or a bound per point) set ``density_resolution``:
    evaluated on that coarser grid and upscaled (bilinear)."""
    coarse = min(res, getattr(model, "density_resolution", res))
    p = model.log_prob(plane_grid(lim, coarse, model.device)).exp().view(1, 1, coarse, coarse)
    if coarse < res:
        p = nn.functional.interpolate(p, size=(res, res), mode="bilinear", align_corners=False)
    return heat_map(p.view(res, res))


@torch.no_grad()
def sample_histogram(model: nn.Module, lim: float, res: int, n: int, seed: int = 0) -> Tensor:
    """A log-scaled histogram of n samples of a 2-D model over [-lim, lim]^2."""
    s = model.sample(n, generator=_generator(model, seed)).float()
    ij = ((s + lim) / (2 * lim) * res).floor().long()
    ok = ((ij >= 0) & (ij < res)).all(1)
    counts = torch.bincount(ij[ok, 1] * res + ij[ok, 0], minlength=res * res)
    return heat_map(counts.view(res, res).float().log1p())
