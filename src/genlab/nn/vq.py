"""Vector quantisation (van den Oord, Vinyals & Kavukcuoglu 2017): the nearest of K codebook
vectors for each encoder output, the straight-through estimator, codebook updates by
gradient or by exponential moving averages, and restarts of unused codes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _all_reduce(*ts: Tensor) -> None:
    """Sum over processes (DDP): every rank keeps the same codebook."""
    if dist.is_available() and dist.is_initialized():
        for t in ts:
            dist.all_reduce(t)


def ema_codebook_update(
    counts: Tensor, sums: Tensor, z: Tensor, onehot: Tensor, decay: float, eps: float
) -> Tensor:
    """One EMA step in place (Appendix A of the paper, with Laplace smoothing of the
    counts as in Sonnet's implementation) and the new codebook (K, d):

        N_i <- decay N_i + (1 - decay) n_i,          n_i = #{j : code(j) = i}
        m_i <- decay m_i + (1 - decay) sum_{j: code(j) = i} z_j
        e_i  = m_i / N~_i,   N~_i = (N_i + eps) / (sum N + K eps) * sum N

    z (n, d) encoder outputs, onehot (n, K) their codes; counts (K,), sums (K, d)."""
    n_i, z_sum = onehot.sum(0), onehot.T @ z  # (K,), (K, d)
    _all_reduce(n_i, z_sum)
    counts.mul_(decay).add_(n_i, alpha=1 - decay)
    sums.mul_(decay).add_(z_sum, alpha=1 - decay)
    total = counts.sum()
    smoothed = (counts + eps) / (total + counts.numel() * eps) * total
    return sums / smoothed[:, None]


class VectorQuantizer(nn.Module):
    """z_e (B, d, H, W) -> z_q (B, d, H, W) with the straight-through gradient, the codes
    (B, H, W) and the loss terms, each summed over the grid and the code dimension (a
    per-image sum, averaged over the batch by the caller):

        codebook   = ||sg[z_e] - e||^2   (gradient updates only; EMA moves e itself)
        commitment = ||z_e - sg[e]||^2   (weighted by beta in the loss)

    ``restart_below`` > 0: codes whose moving-average use per step falls below it are
    moved to random encoder outputs of the batch (dead-code restarts, as Jukebox does)."""

    def __init__(
        self,
        codes: int,
        dim: int,
        ema: bool = True,
        decay: float = 0.99,
        eps: float = 1e-5,
        restart_below: float = 0.0,
    ) -> None:
        super().__init__()
        self.codes, self.dim, self.ema, self.decay, self.eps = codes, dim, ema, decay, eps
        self.restart_below = restart_below
        embed = torch.randn(codes, dim) / dim**0.5
        if ema:
            self.register_buffer("embed", embed)
            self.register_buffer("ema_sums", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        # Moving-average count of each code's use per step (the EMA's N_i in both modes).
        self.register_buffer("ema_counts", torch.ones(codes))

    def codes_of(self, z: Tensor) -> Tensor:
        """Nearest codes (n,) of vectors z (n, d): argmin ||z - e_i||^2."""
        e = self.embed
        dist2 = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(1)[None, :]
        return dist2.argmin(1)

    def lookup(self, idx: Tensor) -> Tensor:
        """Codes (B, H, W) -> their vectors (B, d, H, W)."""
        return F.embedding(idx, self.embed).permute(0, 3, 1, 2).contiguous()

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        b, d, h, w = z_e.shape
        z = z_e.permute(0, 2, 3, 1).reshape(-1, d)  # (n, d), n = B H W
        idx = self.codes_of(z.detach())
        onehot = F.one_hot(idx, self.codes).to(z.dtype)  # (n, K)
        if self.training:
            self._update(z.detach(), onehot)
        z_q = self.lookup(idx.view(b, h, w))
        terms = {"commitment": (z_e - z_q.detach()).pow(2).sum((1, 2, 3)).mean()}
        if not self.ema:
            terms["codebook"] = (z_e.detach() - z_q).pow(2).sum((1, 2, 3)).mean()
        probs = onehot.mean(0)  # (K,) code frequencies in the batch
        terms["perplexity"] = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        terms["usage"] = (probs > 0).float().mean()
        # Straight-through: the forward value is z_q, the gradient passes to z_e unchanged.
        return z_e + (z_q - z_e).detach(), idx.view(b, h, w), terms

    @torch.no_grad()
    def _update(self, z: Tensor, onehot: Tensor) -> None:
        if self.ema:
            self.embed.copy_(
                ema_codebook_update(self.ema_counts, self.ema_sums, z, onehot, self.decay, self.eps)
            )
        else:
            n_i = onehot.sum(0)
            _all_reduce(n_i)
            self.ema_counts.mul_(self.decay).add_(n_i, alpha=1 - self.decay)
        if self.restart_below > 0:
            self._restart(z)

    @torch.no_grad()
    def _restart(self, z: Tensor) -> None:
        """Codes used less than ``restart_below`` times per step on average take random
        encoder outputs of this batch (rank 0's draw under DDP); no host sync."""
        dead = self.ema_counts < self.restart_below  # (K,)
        pick = z[torch.randint(0, z.shape[0], (self.codes,), device=z.device)]  # (K, d)
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(pick, 0)
        embed = self.embed.data if isinstance(self.embed, nn.Parameter) else self.embed
        embed.copy_(torch.where(dead[:, None], pick, embed))
        self.ema_counts.copy_(torch.where(dead, torch.ones_like(self.ema_counts), self.ema_counts))
        if self.ema:
            self.ema_sums.copy_(torch.where(dead[:, None], pick, self.ema_sums))
