"""The mixing layers that flows put between couplings (docs/models/flows.md): Glow's
invertible 1x1 convolution, the exponential of a rank-one matrix, and the fixed
permutations. Each keeps the contract of :mod:`genlab.nn.flows`: ``forward`` maps data
to latent and returns (h, log_det), ``inverse`` maps back.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.nn.flows import FlowLayer, _per_channel, _positions


class InvConv1x1(FlowLayer):
    """Glow's invertible 1x1 convolution (a C x C matrix per position), LU-parameterised:

        W = P L (U + diag(sign * exp(log_s))),   log_det = sum(log_s) * H*W

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular; the
    log-determinant costs O(C) and W stays invertible. Initialised from a random rotation.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        w = torch.linalg.qr(torch.randn(features, features, dtype=torch.float64))[0]
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(features, features), -1))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(s.abs().log().float())

    def weight(self) -> Tensor:
        """W: (C, C)."""
        eye = torch.eye(self.lower.shape[0], device=self.lower.device, dtype=self.lower.dtype)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * self.log_s.exp())
        return self.perm @ lower @ upper

    @staticmethod
    def _mix(w: Tensor, x: Tensor) -> Tensor:
        # A 1x1 convolution on images (cuDNN's kernels), a matrix product on vectors.
        return F.conv2d(x, w[:, :, None, None]) if x.ndim == 4 else F.linear(x, w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ld = self.log_s.sum() * _positions(x)
        return self._mix(self.weight(), x), ld.expand(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        ld = -self.log_s.sum() * _positions(h)
        return self._mix(torch.linalg.inv(self.weight()), h), ld.expand(h.shape[0])


class ExpLowRank(FlowLayer):
    """The always-invertible linear layer h = exp(u v^T) x (docs/models/flows.md#realnvp-and-glow),
    per position:

    exp(u v^T) = I + (e^a - 1) / a * u v^T,   a = v^T u,   log_det = a (* H*W)
    inverse: exp(-u v^T), the same formula with u -> -u.
    """

    def __init__(self, features: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.u = nn.Parameter(torch.randn(features) * init_std / math.sqrt(features))
        self.v = nn.Parameter(torch.randn(features) * init_std * math.sqrt(features) / 2)

    @staticmethod
    def _exp(u: Tensor, v: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        a = torch.dot(v, u)
        # (e^a - 1) / a, with its limit 1 + a/2 near a = 0
        small = a.abs() < 1e-6
        c = torch.where(small, 1 + a / 2, torch.expm1(a) / torch.where(small, 1.0, a))
        vx = torch.einsum("j,bj...->b...", v, x).unsqueeze(1)  # (B, 1, ...)
        return x + c * _per_channel(u, x) * vx, a

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h, a = self._exp(self.u, self.v, x)
        return h, (a * _positions(x)).expand(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        x, a = self._exp(-self.u, self.v, h)
        return x, (a * _positions(h)).expand(h.shape[0])


class Reverse(FlowLayer):
    """Reverses the order of the features (channels): a fixed permutation, log_det 0."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flip(1), x.new_zeros(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h.flip(1), h.new_zeros(h.shape[0])


class Permute(FlowLayer):
    """A fixed permutation of the features (channels): h = x[:, index], log_det 0.

    ``Permute.evens_first(D)`` puts features 0, 2, 4, ... before 1, 3, 5, ...: with it
    (and its inverse after), couplings on contiguous halves act exactly as couplings on
    interleaved ones would, without strided gathers in every layer."""

    def __init__(self, index: Tensor) -> None:
        super().__init__()
        # Not in the state dict: derived from the architecture, as Reverse's order is.
        self.register_buffer("index", index.long(), persistent=False)
        self.register_buffer("inverse_index", torch.argsort(index.long()), persistent=False)

    @classmethod
    def evens_first(cls, features: int, inverse: bool = False) -> Permute:
        index = torch.cat([torch.arange(0, features, 2), torch.arange(1, features, 2)])
        return cls(torch.argsort(index) if inverse else index)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.index_select(1, self.index), x.new_zeros(x.shape[0])

    def inverse(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return h.index_select(1, self.inverse_index), h.new_zeros(h.shape[0])
