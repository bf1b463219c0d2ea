"""Critic-based mutual-information estimators (docs/models/infomax.md).

Each takes a score matrix ``scores`` (B, B) or (B, B, L): ``scores[i, j] = T(a_i, b_j)``,
a critic's score of the pair formed by sample i's first view and sample j's second
view, so the diagonal holds the B positive pairs (draws of the joint p(a, b)) and the
off-diagonal entries the B(B-1) negative pairs (draws of p(a) p(b)). A trailing L axis
holds L independent problems (Deep InfoMax's locations) that are averaged.

- ``infonce`` (van den Oord et al. 2018): E_i[T_ii - log (1/B) sum_j T_ij], a lower
  bound on I(a; b) in nats that can never exceed log B.
- ``dv``: the Donsker-Varadhan bound E_pos[T] - log E_neg[exp T] (nats); unbiased only
  as B -> infinity (the log of a batch mean), high variance.
- ``jsd`` (Nowozin et al. 2016; Hjelm et al. 2019): E_pos[-softplus(-T)] -
  E_neg[softplus(T)], the Jensen-Shannon variational bound: not in nats (at most 0,
  rising monotonically with the true MI for a fixed family of critics), but a gradient
  signal that is stable for any batch size.

Every estimator returns a value to maximise: the training loss is its negative.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Estimator = Literal["jsd", "infonce", "dv"]


def _split(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Positive scores (B, ...) and a (B, B) off-diagonal mask."""
    b = scores.shape[0]
    if scores.shape[1] != b:
        raise ValueError(f"scores must be (B, B[, L]), got {tuple(scores.shape)}")
    pos = torch.diagonal(scores, dim1=0, dim2=1)  # (L, B) or (B,)
    pos = pos.movedim(-1, 0)  # (B, ...)
    neg_mask = ~torch.eye(b, dtype=torch.bool, device=scores.device)
    return pos, neg_mask


def infonce(scores: Tensor) -> Tensor:
    """InfoNCE lower bound on I in nats: mean_i [T_ii - logsumexp_j T_ij] + log B."""
    b = scores.shape[0]
    log_softmax = scores - scores.logsumexp(dim=1, keepdim=True)  # over the candidates j
    return torch.diagonal(log_softmax, dim1=0, dim2=1).mean() + math.log(b)


def donsker_varadhan(scores: Tensor) -> Tensor:
    """DV bound in nats: mean of the positives - log mean over negatives of exp T."""
    pos, neg_mask = _split(scores)
    neg = scores[neg_mask]  # (B(B-1), ...)
    log_mean_exp = neg.logsumexp(dim=0) - math.log(neg.shape[0])
    return (pos.mean(0) - log_mean_exp).mean()


def jsd(scores: Tensor) -> Tensor:
    """Jensen-Shannon estimate: E_pos[-softplus(-T)] - E_neg[softplus(T)] (at most 0; at the
    best critic T* it is 2 JS(p, q) - 2 log 2)."""
    pos, neg_mask = _split(scores)
    return (-F.softplus(-pos)).mean() - F.softplus(scores[neg_mask]).mean()


ESTIMATORS = {"infonce": infonce, "dv": donsker_varadhan, "jsd": jsd}


def mi_lower_bound(scores: Tensor, estimator: Estimator) -> Tensor:
    """The chosen estimator's value of a (B, B[, L]) score matrix (a scalar to maximise)."""
    return ESTIMATORS[estimator](scores)
