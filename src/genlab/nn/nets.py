"""Network families shared by every model: each builds an encoder and a decoder.

A model gets a plain dict ``net`` (from ``conf/model/net/*.yaml``), e.g.
``{"arch": "genlab.nn.MLP", "hidden_sizes": [512, 256]}``, and calls ``build_net(net)``
to get a factory; ``arch`` is an import path, so new families of nets need no registry.
Names: ``hidden_sizes`` is always a list of layer widths, ``hidden_width`` one width.

    encoder(in_shape, out_dim): (B, *in_shape) -> (B, out_dim)
    decoder(in_dim, out_shape): (B, in_dim)    -> (B, *out_shape)   (no output activation)
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Literal

from torch import nn

from genlab.checks import ActivationName, PositiveInt, check_args
from genlab.errors import ConfigError


def _activation(name: str) -> nn.Module:
    return getattr(nn, name)()


class MLP:
    """Fully connected nets; the decoder mirrors the encoder's hidden sizes.

    ``hidden_sizes=[]`` gives a single linear map each way.
    """

    def __init__(
        self,
        hidden_sizes: Sequence[PositiveInt] = (512, 256),
        activation: ActivationName = "ReLU",
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.hidden_sizes = list(hidden_sizes)
        self.activation = activation

    def _stack(self, sizes: list[int]) -> list[nn.Module]:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_activation(self.activation))
        return layers

    def encoder(self, in_shape: Sequence[int], out_dim: int) -> nn.Module:
        d = math.prod(in_shape)
        return nn.Sequential(nn.Flatten(), *self._stack([d, *self.hidden_sizes, out_dim]))

    def decoder(self, in_dim: int, out_shape: Sequence[int]) -> nn.Module:
        d = math.prod(out_shape)
        return nn.Sequential(
            *self._stack([in_dim, *self.hidden_sizes[::-1], d]), nn.Unflatten(1, tuple(out_shape))
        )


class Conv:
    """DCGAN-style convolutional nets for images (C, H, W).

    Encoder: one 4x4 stride-2 conv per entry of ``channels`` (halving H and W), then a
    fully connected layer of ``hidden_width`` units. The decoder mirrors it with
    transposed convolutions. GAN options (all off by default): ``decoder_norm=batch``
    (batch norm after every generator layer but the output, DCGAN), ``encoder_norm``
    (``batch`` or ``layer`` after every critic conv but the first; layer norm keeps the
    examples independent, as a gradient penalty needs) and ``spectral_norm`` (every
    encoder layer, SNGAN).
    """

    def __init__(
        self,
        channels: Sequence[PositiveInt] = (32, 64),
        hidden_width: PositiveInt = 256,
        activation: ActivationName = "ReLU",
        encoder_norm: Literal["none", "batch", "layer"] = "none",
        decoder_norm: Literal["none", "batch"] = "none",
        spectral_norm: bool = False,
    ) -> None:
        check_args(type(self), locals(), "model.net")
        self.channels = list(channels)
        self.hidden_width = hidden_width
        self.activation = activation
        self.encoder_norm = encoder_norm
        self.decoder_norm = decoder_norm
        self.spectral_norm = spectral_norm

    def _enc(self, layer: nn.Module) -> nn.Module:
        """An encoder (critic) layer, spectrally normalised when asked (Miyato et al. 2018)."""
        return nn.utils.parametrizations.spectral_norm(layer) if self.spectral_norm else layer

    def _enc_norm(self, c: int, h: int, w: int) -> list[nn.Module]:
        """The encoder's normalisation after a conv layer of (c, h, w) outputs: batch norm,
        or layer norm over (c, h, w) (no cross-example statistics: safe with a gradient
        penalty, which batch norm is not)."""
        if self.encoder_norm == "batch":
            return [nn.BatchNorm2d(c)]
        if self.encoder_norm == "layer":
            return [nn.LayerNorm([c, h, w])]
        return []

    def check(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """Return (C, h, w) at the bottleneck, or raise a ConfigError if the shape doesn't fit."""
        k = 2 ** len(self.channels)
        if len(shape) != 3 or shape[1] % k or shape[2] % k:
            raise ConfigError(
                f"model/net=conv needs images (C, H, W) with H and W divisible by {k} "
                f"({len(self.channels)} stride-2 layers), but the data has shape {tuple(shape)}: "
                "use model/net=mlp or fewer model.net.channels"
            )
        return self.channels[-1], shape[1] // k, shape[2] // k

    def encoder(self, in_shape: Sequence[int], out_dim: int) -> nn.Module:
        c, h, w = self.check(in_shape)
        layers: list[nn.Module] = []
        side_h, side_w = in_shape[1], in_shape[2]
        for i, (a, b) in enumerate(
            zip([in_shape[0], *self.channels[:-1]], self.channels, strict=True)
        ):
            side_h, side_w = side_h // 2, side_w // 2
            layers.append(self._enc(nn.Conv2d(a, b, 4, stride=2, padding=1)))
            if i > 0:  # DCGAN: no normalisation on the critic's first layer
                layers += self._enc_norm(b, side_h, side_w)
            layers.append(_activation(self.activation))
        return nn.Sequential(
            *layers,
            nn.Flatten(),
            self._enc(nn.Linear(c * h * w, self.hidden_width)),
            _activation(self.activation),
            self._enc(nn.Linear(self.hidden_width, out_dim)),
        )

    def decoder(self, in_dim: int, out_shape: Sequence[int]) -> nn.Module:
        c, h, w = self.check(out_shape)
        batch = self.decoder_norm == "batch"
        layers: list[nn.Module] = [
            nn.Linear(in_dim, self.hidden_width),
            *([nn.BatchNorm1d(self.hidden_width)] if batch else []),
            _activation(self.activation),
            nn.Linear(self.hidden_width, c * h * w),
            *([nn.BatchNorm1d(c * h * w)] if batch else []),
            _activation(self.activation),
            nn.Unflatten(1, (c, h, w)),
        ]
        rev = self.channels[::-1]
        for i, (a, b) in enumerate(zip(rev, [*rev[1:], out_shape[0]], strict=True)):
            layers.append(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1))
            if i < len(rev) - 1:  # every layer but the output (DCGAN's generator)
                layers += [nn.BatchNorm2d(b)] if batch else []
                layers.append(_activation(self.activation))
        return nn.Sequential(*layers)


def build_net(spec: dict | None) -> MLP | Conv:
    """Factory from a net spec ``{"arch": "<module>.<Class>", **kwargs}`` (None: default MLP)."""
    spec = dict(spec or {"arch": "genlab.nn.MLP"})
    path = spec.pop("arch", "genlab.nn.MLP")
    module, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"model.net.arch={path!r} cannot be imported: use genlab.nn.MLP or genlab.nn.Conv"
        ) from None
    try:
        return cls(**spec)
    except TypeError as e:
        raise ConfigError(f"model.net: {e}") from None
