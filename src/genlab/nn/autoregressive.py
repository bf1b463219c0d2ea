"""Autoregressive networks: MADE's masked MLP (Germain et al. 2015) and the gated PixelCNN
(van den Oord et al. 2016, "Conditional image generation with PixelCNN decoders").

Both map a (B, ...) input to per-pixel distribution parameters where the output for pixel d
depends only on pixels before d in the model's order: p(x) = prod_d p(x_d | x_<d), exact in
one pass; sampling takes one pass per pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---- MADE -----------------------------------------------------------------------------


def made_degrees(
    dim: int, hidden_sizes: Sequence[int], order: Tensor, generator: torch.Generator
) -> list[Tensor]:
    """The degrees m^l of MADE's units: the inputs' positions 1..D in ``order`` (order[i]
    is the pixel at position i), then each hidden unit's m ~ U{min(m^{l-1}), ..., D - 1}
    (Germain et al. eq. 12). Unit k of layer l connects to unit j of layer l - 1 iff
    m^l_k >= m^{l-1}_j; output d to hidden unit k iff m^0_d > m^L_k."""
    deg = torch.empty(dim, dtype=torch.long)
    deg[order] = torch.arange(1, dim + 1)
    degrees = [deg]
    for h in hidden_sizes:
        low = int(degrees[-1].min()) if dim > 1 else 1
        high = max(dim - 1, low)
        degrees.append(torch.randint(low, high + 1, (h,), generator=generator))
    return degrees


class MADENet(nn.Module):
    """A masked MLP over D inputs with ``num_masks`` connectivities (an ordering and hidden
    degrees each), stored as degrees (a few KB, checkpointed) and turned into masks per
    call. ``forward(x, mask)`` -> (B, params, D): the distribution parameters of every
    input given the inputs before it in mask ``mask``'s order."""

    def __init__(
        self,
        dim: int,
        hidden_sizes: Sequence[int],
        params: int = 1,
        num_masks: int = 1,
        order_agnostic: bool = False,
        seed: int = 0,
        direct: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.params, self.num_masks = dim, params, num_masks
        sizes = [dim, *hidden_sizes]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.out = nn.Linear(sizes[-1], dim * params)
        # Optional direct input -> output connections (masked strictly, as the output layer).
        self.direct = nn.Linear(dim, dim * params, bias=False) if direct else None
        g = torch.Generator().manual_seed(seed)
        for i in range(len(hidden_sizes) + 1):
            self.register_buffer(f"deg{i}", torch.empty(num_masks, sizes[i], dtype=torch.long))
        for m in range(num_masks):
            # The first mask keeps the natural order unless every mask is order-agnostic.
            order = torch.randperm(dim, generator=g) if order_agnostic else torch.arange(dim)
            for i, d in enumerate(made_degrees(dim, hidden_sizes, order, g)):
                getattr(self, f"deg{i}")[m] = d

    def order(self, mask: int = 0) -> Tensor:
        """(D,) the pixels in the order mask ``mask`` generates them."""
        return self.deg0[mask].argsort()

    def masks(self, mask: int) -> list[Tensor]:
        """Float masks (out, in) of the hidden layers, the output and the direct layer."""
        degs = [getattr(self, f"deg{i}")[mask] for i in range(len(self.hidden) + 1)]
        pairs = zip(degs, degs[1:], strict=False)
        out = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in pairs]
        # Output d (repeated per parameter, rows p * D + d) sees units of degree < m^0_d.
        target = degs[0].repeat(self.params)
        out.append((target[:, None] > degs[-1][None, :]).float())
        out.append((target[:, None] > degs[0][None, :]).float())
        return out

    def forward(self, x: Tensor, mask: int = 0) -> Tensor:
        """x (B, D) in [-1, 1] -> (B, params, D)."""
        masks = self.masks(mask)
        h = x
        for layer, m in zip(self.hidden, masks, strict=False):
            h = F.relu(F.linear(h, layer.weight * m, layer.bias))
        y = F.linear(h, self.out.weight * masks[-2], self.out.bias)
        if self.direct is not None:
            y = y + F.linear(x, self.direct.weight * masks[-1])
        return y.view(-1, self.params, self.dim)

    @torch.no_grad()
    def sample(self, n: int, mask: int, draw, to_input) -> Tensor:
        """n draws (n, D) of integer values in mask ``mask``'s order: D steps, each
        computing only what the new pixel changes (the first layer's pre-activations
        grow by one column; deeper layers and pixel d's output rows run in full), so a
        1-hidden-layer MADE costs O(H) per step instead of O(D H). ``draw(out (n,
        params, 1)) -> (n, 1)`` samples a pixel; ``to_input`` maps values to inputs."""
        masks = self.masks(mask)
        weights = [layer.weight * m for layer, m in zip(self.hidden, masks, strict=False)]
        w_out = (self.out.weight * masks[-2]).view(self.params, self.dim, -1)  # (P, D, H)
        b_out = self.out.bias.view(self.params, self.dim)
        w_dir = None
        if self.direct is not None:
            w_dir = (self.direct.weight * masks[-1]).view(self.params, self.dim, self.dim)
        x = torch.zeros(n, self.dim, device=w_out.device)
        x_in = to_input(x)
        a = None  # (n, H1): the first layer's pre-activations for the current x_in
        if weights:
            a = F.linear(x_in, weights[0], self.hidden[0].bias)
        for d in self.order(mask).tolist():
            h = F.relu(a) if a is not None else x_in  # no hidden layer: a masked linear map
            for layer, w in zip(self.hidden[1:], weights[1:], strict=False):
                h = F.relu(F.linear(h, w, layer.bias))
            out = h @ w_out[:, d].T + b_out[:, d]  # (n, P)
            if w_dir is not None:
                out = out + x_in @ w_dir[:, d].T
            x[:, d] = draw(out[:, :, None])[:, 0]
            new_in = to_input(x[:, d])
            if a is not None:
                a = a + (new_in - x_in[:, d])[:, None] * weights[0][:, d]
            x_in[:, d] = new_in
        return x


# ---- gated PixelCNN -------------------------------------------------------------------


def _down_shift(x: Tensor) -> Tensor:
    """Row i <- row i - 1 (zeros on top): the vertical stack's view of rows above only."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def _groups(n: int, groups: int, gated: bool = False) -> Tensor:
    """The colour group (0 = R, 1 = G, 2 = B; one group for grey) of each of n channels:
    contiguous blocks; for gated pre-activations, the same blocks in each half."""
    if gated:
        return (torch.arange(n) % (n // 2)) * groups // (n // 2)
    return torch.arange(n) * groups // n


def _group_mask(out_groups: Tensor, in_groups: Tensor, strict: bool) -> Tensor:
    """(out, in) 0/1: an output of colour g sees inputs of colours < g (strict, mask type
    A) or <= g (type B) of the same pixel."""
    o, i = out_groups[:, None], in_groups[None, :]
    return (i < o if strict else i <= o).float()


class _MaskedConv(nn.Conv2d):
    """A convolution whose weights at the current pixel (the kernel's last column; 1x1
    kernels are all current pixel) are masked between colour groups."""

    def __init__(self, c_in: int, c_out: int, kernel, mask: Tensor) -> None:
        super().__init__(c_in, c_out, kernel)
        full = torch.ones_like(self.weight)
        full[..., -1] = mask[:, :, None]  # (out, in, kh): the current column
        self.register_buffer("mask", full)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class GatedLayer(nn.Module):
    """One gated PixelCNN layer: a vertical stack (a (k//2 + 1) x k convolution over rows
    <= i) and a horizontal stack (a 1 x (k//2 + 1) convolution over columns <= j of row
    i), the vertical features, shifted one row down, added to the horizontal ones through
    a 1x1 convolution, gated units tanh(a) * sigmoid(b), class biases added to both stacks,
    and a residual 1x1 connection in the horizontal stack.

    At the current pixel the horizontal stack's weights are masked between colours (R, G,
    B in turn; one colour for grey images): ``first`` (mask type A) hides the pixel's own
    value and later colours, later layers (type B) let colour g see features of colours
    <= g, which by then depend only on what comes before it."""

    def __init__(
        self,
        c_in: int,
        channels: int,
        kernel: int,
        first: bool = False,
        num_classes: int = 0,
        colours: int = 1,
    ) -> None:
        super().__init__()
        self.first, self.k = first, kernel
        half = kernel // 2
        in_groups = torch.arange(c_in) if first and c_in == colours else _groups(c_in, colours)
        pre = _groups(2 * channels, colours, gated=True)
        self.v_conv = nn.Conv2d(c_in, 2 * channels, (half + 1, kernel))
        self.h_conv = _MaskedConv(
            c_in, 2 * channels, (1, half + 1), _group_mask(pre, in_groups, strict=first)
        )
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)  # rows above: unmasked
        feat = _groups(channels, colours)
        self.h_out = _MaskedConv(channels, channels, 1, _group_mask(feat, feat, strict=False))
        self.embed = nn.Embedding(num_classes, 4 * channels) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """v, h (B, C, H, W) -> the next layer's (B, channels, H, W) each."""
        half = self.k // 2
        v_pre = self.v_conv(F.pad(v, (half, half, half, 0)))  # row i <- rows i-half..i
        h_pre = self.h_conv(F.pad(h, (half, 0, 0, 0))) + self.v_to_h(_down_shift(v_pre))
        if self.embed is not None and y is not None:
            bv, bh = self.embed(y)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + bv, h_pre + bh
        v_out = _gate(v_pre)
        h_out = self.h_out(_gate(h_pre))
        return v_out, h_out if self.first else h + h_out


def _gate(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedPixelCNN(nn.Module):
    """x (B, C, H, W) in [-1, 1] -> (B, params, C, H, W): the first layer (type A, kernel
    ``first_kernel``), ``layers - 1`` gated layers (type B, kernel ``kernel``), then
    ReLU -> 1x1 -> ReLU -> 1x1 on the horizontal stack. The outputs of sub-pixel (i, j, c)
    depend on the pixels before (i, j) in raster order and on colours < c of pixel (i, j)
    (van den Oord et al. 2016's R -> G -> B order). ``num_classes`` > 0: conditional,
    ``forward(x, y)`` with labels y (B,). ``in_embed`` > 0: the input is a (B, H, W) grid
    of integer codes (the VQ-VAE's prior), embedded; outputs (B, params, 1, H, W)."""

    def __init__(
        self,
        in_channels: int,
        params: int,
        channels: int = 64,
        layers: int = 8,
        kernel: int = 3,
        first_kernel: int = 7,
        head_channels: int | None = None,
        num_classes: int = 0,
        in_embed: int = 0,
    ) -> None:
        super().__init__()
        self.embed_in = nn.Embedding(in_embed, channels) if in_embed else None
        colours = 1 if in_embed else in_channels
        self.colours, self.params = colours, params
        c0 = channels if in_embed else in_channels
        self.layers = nn.ModuleList(
            GatedLayer(
                c0 if i == 0 else channels, channels, first_kernel if i == 0 else kernel,
                first=i == 0, num_classes=num_classes, colours=colours,
            )
            for i in range(layers)
        )  # fmt: skip
        head = head_channels or 2 * channels
        feat, mid = _groups(channels, colours), _groups(head, colours)
        out = torch.arange(params * colours) % colours  # output p * C + c: colour c
        self.head = nn.Sequential(
            nn.ReLU(),
            _MaskedConv(channels, head, 1, _group_mask(mid, feat, strict=False)),
            nn.ReLU(),
            _MaskedConv(head, params * colours, 1, _group_mask(out, mid, strict=False)),
        )

    def window(self, i: int, j: int, height: int, width: int) -> tuple[slice, slice]:
        """The rows and columns of the input that the outputs at pixel (i, j) depend on:
        the vertical stack reaches k//2 rows up and k//2 columns either side per layer,
        the horizontal stack k//2 columns left, and the vertical features enter it one row
        down. Every output in a crop of (B, C, H, W) that holds this window equals the
        full image's (the convolutions' zero padding aside, which only reaches outputs
        outside it), so sampling pixel (i, j) costs O(receptive field), not O(H W): a
        sampler's total cost grows linearly with the number of pixels."""
        reach = sum(layer.k // 2 for layer in self.layers)
        rows = slice(max(0, i - 1 - reach), i + 1)
        return rows, slice(max(0, j - reach), min(width, j + reach + 1))

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if self.embed_in is not None:  # (B, H, W) codes -> (B, channels, H, W)
            x = self.embed_in(x.long()).permute(0, 3, 1, 2).contiguous()
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, y)
        out = self.head(h)  # (B, params * C, H, W)
        return out.view(out.shape[0], self.params, self.colours, *out.shape[2:])
