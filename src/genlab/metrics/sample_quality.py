"""Sample-quality scores of two feature sets (real (N, d), generated (M, d)), as pure
functions: FID, KID, precision / recall and density / coverage.

- **FID** (Heusel et al. 2017): |mu_r - mu_g|^2 + tr(S_r + S_g - 2 (S_r S_g)^(1/2)) with
  unbiased covariances, in float64. With factors S = F F' (Cholesky, or the centred
  points when there are fewer than dimensions), tr((S_r S_g)^(1/2)) is the sum of the
  singular values of F_r' F_g: a symmetric eigenvalue problem, no matrix square root (an
  order of magnitude faster than ``scipy.linalg.sqrtm`` for 2048-d Inception features).
- **KID** (Binkowski et al. 2018): the unbiased MMD^2 with the cubic polynomial kernel
  (x.y / d + 1)^3, mean and standard deviation over ``subsets`` random subsets of
  ``subset_size`` of each set (seeded: the same draws every time).
- **Precision / recall** (Kynkaanniemi et al. 2019, k = 3): the fraction of generated
  points inside the real manifold (the union of balls around each real point reaching its
  k-th nearest real neighbour), and of real points inside the generated manifold.
- **Density / coverage** (Naeem et al. 2020, k = 5): how many real balls contain each
  generated point on average, divided by k; the fraction of real balls that contain a
  generated point. Strict inequalities, as the ``prdc`` package computes them.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

CHUNK = 1024  # rows of a distance block: (1024, N) floats at a time


def _finite(*xs: Tensor) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in xs)


def _stats(x: Tensor) -> tuple[Tensor, Tensor]:
    x = x.double()
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / max(x.shape[0] - 1, 1)


def _cov_factor(s: Tensor) -> Tensor:
    """F (d, d) with F F' = s: Cholesky when s is positive definite, else from ``eigh``
    (singular covariances: dead ReLU units, fewer points than dimensions)."""
    s = (s + s.T) / 2
    chol, info = torch.linalg.cholesky_ex(s)
    if int(info) == 0:
        return chol
    val, vec = torch.linalg.eigh(s)
    return vec * val.clamp_min(0).sqrt()


def _factor(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean (d,), covariance (d, d) and a factor F (d, k) of it (F F' = covariance): the
    centred points themselves when there are no more of them than dimensions."""
    mu, s = _stats(x)
    n, d = x.shape
    if n - 1 <= d:
        return mu, s, (x.double() - mu).T / max(n - 1, 1) ** 0.5
    return mu, s, _cov_factor(s)


def _trace_sqrt(f1: Tensor, f2: Tensor) -> Tensor:
    """tr((S1 S2)^(1/2)) for S1 = F1 F1', S2 = F2 F2': the eigenvalues of S1 S2 are the
    squared singular values of F1' F2, so the trace is their sum (eigenvalues of the
    smaller Gram matrix: no d x d square root, no complex round-off)."""
    m = f1.T @ f2  # (k1, k2)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return torch.linalg.eigvalsh((gram + gram.T) / 2).clamp_min(0).sqrt().sum()


def frechet_distance_stats(mu1: Tensor, s1: Tensor, mu2: Tensor, s2: Tensor) -> float:
    """FID of two Gaussians (means (d,), covariances (d, d))."""
    mu1, s1, mu2, s2 = (t.double() for t in (mu1, s1, mu2, s2))
    tr = _trace_sqrt(_cov_factor(s1), _cov_factor(s2))
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * tr)


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FID of two feature sets (N, d), (M, d); NaN when either holds a non-finite value
    or a single point (no covariance)."""
    if min(real.shape[0], fake.shape[0]) < 2 or not _finite(real, fake):
        return float("nan")
    (mu1, s1, f1), (mu2, s2, f2) = _factor(real), _factor(fake)
    return float(((mu1 - mu2) ** 2).sum() + s1.trace() + s2.trace() - 2 * _trace_sqrt(f1, f2))


def frechet_distance_se(real: Tensor, fake: Tensor, resamples: int = 20, seed: int = 0) -> float:
    """Bootstrap standard error of the FID of two feature sets: the standard deviation of
    the FID over ``resamples`` draws of both sets with replacement (each the set's size).
    It measures how far another draw of as many samples and images would move the
    score, not the FID's bias from a finite sample (which the same count shares)."""
    if resamples < 2 or min(real.shape[0], fake.shape[0]) < 2 or not _finite(real, fake):
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(resamples):
        i = torch.randint(real.shape[0], (real.shape[0],), generator=g).to(real.device)
        j = torch.randint(fake.shape[0], (fake.shape[0],), generator=g).to(fake.device)
        values.append(frechet_distance(real[i], fake[j]))
    return float(torch.tensor(values, dtype=torch.float64).std())


def kernel_inception_distance(
    real: Tensor, fake: Tensor, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets); ``subset_size`` is capped by the smaller set."""
    m = min(subset_size, real.shape[0], fake.shape[0])
    if m < 2 or not _finite(real, fake):
        return float("nan"), float("nan")
    d = real.shape[1]
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(real.shape[0], generator=g)[:m].to(real.device)].float()
        y = fake[torch.randperm(fake.shape[0], generator=g)[:m].to(fake.device)].float()
        # Products in float32 (the cost), the cube and the sums in float64.
        kxx, kyy, kxy = (((a @ b.T).double() / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        values.append(off - 2 * kxy.sum() / m**2)
    v = torch.stack(values)
    return float(v.mean()), float(v.std()) if subsets > 1 else 0.0


def knn_radii(x: Tensor, ks: tuple[int, ...]) -> dict[int, Tensor]:
    """{k: (N,) distance of each point to its k-th nearest other point of x}; N > k."""
    top = max(ks) + 1  # the point itself comes first (distance 0)
    if x.shape[0] < top:
        raise ValueError(f"a {max(ks)}-th nearest neighbour needs more than {max(ks)} points")
    rows = []
    for i in range(0, x.shape[0], CHUNK):
        d = torch.cdist(x[i : i + CHUNK], x)  # (c, N)
        rows.append(d.topk(top, dim=1, largest=False).values)
    near = torch.cat(rows)  # (N, top) ascending
    return {k: near[:, k] for k in ks}


def prdc(real: Tensor, fake: Tensor, k_pr: int = 3, k_dc: int = 5) -> dict[str, float]:
    """precision, recall (k = ``k_pr``), density, coverage (k = ``k_dc``) of feature sets
    real (N, d) and fake (M, d). NaN where a k-th nearest neighbour does not exist
    (precision needs N > k_pr, recall M > k_pr, density and coverage N > k_dc), and for
    all four when a feature is not finite."""
    out = dict.fromkeys(("precision", "recall", "density", "coverage"), float("nan"))
    n, m = real.shape[0], fake.shape[0]
    p, r, dc = n > k_pr, m > k_pr, n > k_dc
    if not (p or r or dc) or not _finite(real, fake):
        return out
    real, fake = real.float(), fake.float()
    r_real = knn_radii(real, (k_pr,) * p + (k_dc,) * dc)  # (N,) each
    r_fake = knn_radii(fake, (k_pr,))[k_pr] if r else None  # (M,)
    in_real = torch.zeros(m, dtype=torch.bool, device=real.device)
    density_hits = torch.zeros(m, device=real.device)
    recalled = torch.zeros(n, dtype=torch.bool, device=real.device)
    nearest_fake = torch.full((n,), float("inf"), device=real.device)
    for i in range(0, m, CHUNK):
        d = torch.cdist(fake[i : i + CHUNK], real)  # (c, N)
        if p:
            in_real[i : i + CHUNK] = (d < r_real[k_pr]).any(1)
        if r:
            recalled |= (d < r_fake[i : i + CHUNK, None]).any(0)
        if dc:
            density_hits[i : i + CHUNK] = (d < r_real[k_dc]).sum(1).float()
            nearest_fake = torch.minimum(nearest_fake, d.min(0).values)
    if p:
        out["precision"] = float(in_real.float().mean())
    if r:
        out["recall"] = float(recalled.float().mean())
    if dc:
        out["density"] = float(density_hits.mean() / k_dc)
        out["coverage"] = float((nearest_fake < r_real[k_dc]).float().mean())
    return out


def sample_scores(
    real: Tensor,
    fake: Tensor,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    seed: int = 0,
    fid_resamples: int = 0,
) -> dict[str, float]:
    """fid, kid, kid_std, precision, recall, density, coverage of two feature sets; with
    ``fid_resamples`` >= 2 also fid_se, the FID's bootstrap standard error."""
    kid, kid_std = kernel_inception_distance(real, fake, kid_subsets, kid_subset_size, seed)
    out = {"fid": frechet_distance(real, fake), "kid": kid, "kid_std": kid_std, **prdc(real, fake)}
    if fid_resamples >= 2:
        out["fid_se"] = frechet_distance_se(real, fake, fid_resamples, seed)
    return out


def warn_non_finite(model: str, fake: Tensor, split: str, which: str = "") -> int:
    """Count the rows of ``fake`` (n, d) that are not finite and say so in one warning
    line: the scores are then nan because the sampler overflowed, not the metric (e.g. a
    flow whose inverse overflows on a few draws). Returns the count."""
    bad = int((~torch.isfinite(fake).all(1)).sum())
    if bad:
        logging.getLogger(__name__).warning(
            "%s: %d of %d samples%s gave non-finite features, so %s FID / KID / PRDC are "
            "nan: the model's sampler overflows on some draws, not the metric",
            model, bad, fake.shape[0], which, split,
        )  # fmt: skip
    return bad
