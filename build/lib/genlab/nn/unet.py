"""Time-conditioned denoisers for diffusion and flow matching: a small U-Net for images
and an MLP with a time embedding for vectors (``data=toy2d``).

Both are factories like :mod:`genlab.nn.nets` (``model/net=unet``, ``model/net=time_mlp``):
``denoiser(data_shape, num_classes)`` builds a net ``f(x, t, y=None) -> (B, *data_shape)``
with x (B, *data_shape), t (B,) floats on the scale [0, 1000] (sinusoidal embedding, as in
Ho et al. 2020) and y (B,) labels in [0, num_classes], num_classes being the "no label"
index that classifier-free guidance trains on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import ActivationName, NonNegativeInt, PositiveInt, check_args
from genlab.errors import ConfigError

MAX_PERIOD = 10000.0


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017; Ho et al. 2020): (B,) -> (B, dim),
    frequencies from 1 to 1 / MAX_PERIOD, cos then sin."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], 1)
    return F.pad(emb, (0, dim % 2))


class TimeEmbedding(nn.Module):
    """t (and a label) -> (B, emb_dim): an MLP on the sinusoidal embedding, plus a learned
    label embedding when num_classes > 0 (index num_classes = no label)."""

    def __init__(self, base_dim: int, emb_dim: int, num_classes: int = 0) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.label = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.num_classes = num_classes

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.mlp(timestep_embedding(t, self.base_dim))
        if self.label is not None:
            if y is None:  # unconditional use of a conditional net: the null label
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.label(y)
        return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with the time embedding added in between (Ho et al.
    2020); a 1x1 skip when the width changes; the last conv starts at zero (the block
    starts as the identity)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(groups, c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the H*W positions (scaled dot product), residual,
    output projection starting at zero."""

    def __init__(self, channels: int, heads: int, groups: int) -> None:
        super().__init__()
        if channels % heads:
            raise ConfigError(
                f"model.net.heads={heads} does not divide the {channels} channels of an "
                "attention layer: pick heads dividing every width"
            )
        self.heads = heads
        self.norm = nn.GroupNorm(_groups(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # (B, heads, HW, c / heads) each
        out = F.scaled_dot_product_attention(
            q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)
        )
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


def _groups(groups: int, channels: int) -> int:
    """The largest group count <= groups dividing channels."""
    g = min(groups, channels)
    while channels % g:
        g -= 1
    return g


class UNetModule(nn.Module):
    """A U-Net denoiser (Ronneberger et al. 2015 as used by Ho et al. 2020): one level per
    channel multiplier, each with ``n_res_blocks`` residual blocks (self-attention after
    them at the lowest resolution), strided-conv downsampling between levels; a middle of
    res-attention-res; the decoder mirrors it on concatenated skips and upsamples to the
    skip's size (odd sizes such as 7x7 work)."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        channel_mults: Sequence[int],
        n_res_blocks: int,
        attention: bool,
        heads: int,
        dropout: float,
        groups: int,
        num_classes: int,
    ) -> None:
        super().__init__()
        emb_dim = 4 * channels
        self.embed = TimeEmbedding(channels, emb_dim, num_classes)
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        widths = [channels * m for m in channel_mults]
        last = len(widths) - 1

        def block(a: int, b: int) -> ResBlock:
            return ResBlock(a, b, emb_dim, groups, dropout)

        self.down = nn.ModuleList()
        skips, c = [channels], channels
        for i, w in enumerate(widths):
            for _ in range(n_res_blocks):
                layers = [block(c, w)]
                if attention and i == last:
                    layers.append(Attention(w, heads, groups))
                self.down.append(nn.ModuleList(layers))
                skips.append(c := w)
            if i < last:
                self.down.append(nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        mid = [block(c, c), Attention(c, heads, groups)] if attention else [block(c, c)]
        self.mid = nn.ModuleList([*mid, block(c, c)])
        self.up = nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            for _ in range(n_res_blocks + 1):
                layers = [block(c + skips.pop(), w)]
                if attention and i == last:
                    layers.append(Attention(w, heads, groups))
                self.up.append(nn.ModuleList(layers))
                c = w
            if i > 0:
                self.up.append(nn.ModuleList([_Upsample(c)]))
        self.out = nn.Sequential(
            nn.GroupNorm(_groups(groups, c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.embed(t, y)  # (B, 4 * channels)
        h = self.stem(x)
        hs = [h]
        for layers in self.down:
            h = _run(layers, h, emb)
            hs.append(h)
        h = _run(self.mid, h, emb)
        for layers in self.up:
            if isinstance(layers[0], _Upsample):
                h = layers[0](h, hs[-1].shape[-2:])
            else:
                h = _run(layers, torch.cat([h, hs.pop()], 1), emb)
        return self.out(h)


def _run(layers: nn.ModuleList, h: Tensor, emb: Tensor) -> Tensor:
    for layer in layers:
        h = layer(h, emb) if isinstance(layer, (ResBlock, Attention)) else layer(h)
    return h


class _Upsample(nn.Module):
    """Nearest-neighbour upsampling to a given size, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: Sequence[int]) -> Tensor:
        return self.conv(F.interpolate(x, size=tuple(size), mode="nearest"))


class TimeMLPModule(nn.Module):
    """f(x, t, y) = MLP([flatten(x), u, sin(2^k pi u), cos(2^k pi u)]) reshaped like x, with
    u = t / 1000 in [0, 1] and k = 0..frequencies-1 (low-frequency Fourier features: the
    U-Net's sinusoidal embedding, made for integer timesteps, leaves a small MLP on 2-D
    data far from the modes after the same number of steps); a label embedding is added
    to the first hidden layer."""

    def __init__(
        self,
        data_shape: Sequence[int],
        width: int,
        depth: int,
        activation: str,
        num_classes: int,
        frequencies: int,
    ) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        d = math.prod(self.data_shape)
        self.register_buffer(
            "freqs",
            math.pi * 2.0 ** torch.arange(frequencies, dtype=torch.float32),
            persistent=False,
        )
        in_dim = d + 1 + 2 * frequencies
        self.label = nn.Embedding(num_classes + 1, width) if num_classes and depth else None
        self.num_classes = num_classes
        self.first = nn.Linear(in_dim, width if depth else d)
        layers: list[nn.Module] = []
        for _ in range(depth - 1):
            layers += [getattr(nn, activation)(), nn.Linear(width, width)]
        if depth:
            layers += [getattr(nn, activation)(), nn.Linear(width, d)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        u = (t.float() / 1000.0)[:, None]  # (B, 1)
        f = u * self.freqs  # (B, frequencies)
        h = self.first(torch.cat([x.flatten(1), u, f.sin(), f.cos()], 1))
        if self.label is not None:
            if y is None:
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            h = h + self.label(y)
        return self.net(h).view(x.shape)


class _DenoiserFactory:
    """Denoiser nets build denoisers only: the encoder/decoder families say so in one line."""

    def encoder(self, *args: object) -> nn.Module:
        raise ConfigError(
            f"model/net={type(self).__name__} builds denoisers for model=ddpm or "
            "model=flow_matching: use model/net=mlp or conv with this model"
        )

    decoder = encoder


class UNet(_DenoiserFactory):
    """``model/net=unet``: the U-Net denoiser for (C, H, W) images. ``channels`` is the
    first level's width, ``channel_mults`` one entry per resolution (two halvings for
    (1, 2, 2): 28 -> 14 -> 7, 32 -> 16 -> 8), ``attention`` adds self-attention at the
    lowest resolution and in the middle."""

    def __init__(
        self,
        channels: PositiveInt = 32,
        channel_mults: Sequence[PositiveInt] = (1, 2, 2),
        n_res_blocks: PositiveInt = 1,
        attention: bool = True,
        heads: PositiveInt = 4,
        dropout: float = 0.1,
        groups: PositiveInt = 8,
    ) -> None:
        check_args(type(self), locals(), "model.net")
        if not 0 <= dropout < 1:
            raise ConfigError(f"model.net.dropout={dropout} must be in [0, 1)")
        self.kwargs = dict(
            channels=channels,
            channel_mults=list(channel_mults),
            n_res_blocks=n_res_blocks,
            attention=attention,
            heads=heads,
            dropout=dropout,
            groups=groups,
        )

    def denoiser(self, data_shape: Sequence[int], num_classes: int = 0) -> nn.Module:
        if len(data_shape) != 3:
            raise ConfigError(
                f"model/net=unet needs images (C, H, W); this data has shape {tuple(data_shape)}: "
                "use model/net=time_mlp for vector data such as data=toy2d"
            )
        return UNetModule(data_shape[0], num_classes=num_classes, **self.kwargs)


class TimeMLP(_DenoiserFactory):
    """``model/net=time_mlp``: an MLP on [x, Fourier features of t] for vector data (toy2d)
    or flattened small images."""

    def __init__(
        self,
        width: PositiveInt = 256,
        depth: NonNegativeInt = 3,
        activation: ActivationName = "SiLU",
        frequencies: NonNegativeInt = 6,
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.kwargs = dict(width=width, depth=depth, activation=activation, frequencies=frequencies)

    def denoiser(self, data_shape: Sequence[int], num_classes: int = 0) -> nn.Module:
        return TimeMLPModule(data_shape, num_classes=num_classes, **self.kwargs)
