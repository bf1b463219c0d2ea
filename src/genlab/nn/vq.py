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

    The first training batch sets the codebook to random encoder outputs (a random
    codebook far from them leaves every vector nearest one code, which no update fixes);
    ``restart_below`` > 0: codes whose moving-average use per step falls below that
    fraction of an even share (n / K of the n vectors of a step) move onto random encoder
    outputs of the batch (dead-code restarts, as Jukebox does)."""

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
        # 0 until the first training batch has initialised the codebook (checkpointed, so
        # a resumed run does not initialise twice).
        self.register_buffer("initialised", torch.zeros(()))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Checkpoints written before the flag existed hold a trained codebook.
        state_dict.setdefault(prefix + "initialised", torch.ones(()))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        pick = even = None
        if self.training:
            pick, even = self._draw(z.detach()), self._even_share(z.shape[0])
            self._initialise(pick, even)
        idx = self.codes_of(z.detach())
        onehot = F.one_hot(idx, self.codes).to(z.dtype)  # (n, K)
        if self.training:
            self._update(z.detach(), onehot, pick, even)
        z_q = self.lookup(idx.view(b, h, w))
        terms = {"commitment": (z_e - z_q.detach()).pow(2).sum((1, 2, 3)).mean()}
        if not self.ema:
            terms["codebook"] = (z_e.detach() - z_q).pow(2).sum((1, 2, 3)).mean()
        probs = onehot.mean(0)  # (K,) code frequencies in the batch
        terms["perplexity"] = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        terms["usage"] = (probs > 0).float().mean()
        # Straight-through: the forward value is z_q, the gradient passes to z_e unchanged.
        return z_e + (z_q - z_e).detach(), idx.view(b, h, w), terms

    def _codebook(self) -> Tensor:
        return self.embed.data if isinstance(self.embed, nn.Parameter) else self.embed

    def _even_share(self, n: int) -> float:
        """n / K: a code's use per step if all were used alike (n vectors on every rank)."""
        if dist.is_available() and dist.is_initialized():
            n *= dist.get_world_size()  # the counts sum every rank's vectors
        return n / self.codes

    @torch.no_grad()
    def _draw(self, z: Tensor) -> Tensor:
        """(K, d) random vectors of z (n, d); rank 0's draw under DDP."""
        pick = z[torch.randint(0, z.shape[0], (self.codes,), device=z.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(pick, 0)
        return pick

    def _reset(self, where: Tensor, pick: Tensor, count: float) -> None:
        """Codes ``where`` (bool, (K,) or ()) <- ``pick`` with use count ``count`` (EMA
        sums to match: e = m / N)."""
        embed = self._codebook()
        embed.copy_(torch.where(where[..., None], pick, embed))
        self.ema_counts.copy_(torch.where(where, count, self.ema_counts))
        if self.ema:
            self.ema_sums.copy_(torch.where(where[..., None], pick * count, self.ema_sums))

    @torch.no_grad()
    def _initialise(self, pick: Tensor, even: float) -> None:
        """At the first training batch: codes <- ``pick``, each with the count of a
        restarted code (an even share without restarts), so codes the batch leaves unused
        move at once. Later batches: unchanged (torch.where on the flag: no host sync)."""
        count = self.restart_below * even if self.restart_below > 0 else even
        self._reset(self.initialised == 0, pick, count)
        self.initialised.fill_(1)

    @torch.no_grad()
    def _update(self, z: Tensor, onehot: Tensor, pick: Tensor, even: float) -> None:
        if self.ema:
            self.embed.copy_(
                ema_codebook_update(self.ema_counts, self.ema_sums, z, onehot, self.decay, self.eps)
            )
        else:
            n_i = onehot.sum(0)
            _all_reduce(n_i)
            self.ema_counts.mul_(self.decay).add_(n_i, alpha=1 - self.decay)
        if self.restart_below > 0:
            # Codes whose moving-average use fell under restart_below of an even share
            # move onto random encoder outputs, with a count at the threshold: one that
            # is not used enough at once moves again at the next step (as Jukebox's).
            threshold = self.restart_below * even
            self._reset(self.ema_counts < threshold, pick, threshold)
