"""Metrics: pure functions of tensors and torchmetrics-based accumulators."""

from genlab.metrics.latent import LatentMoments, StandardError, active_units, pearson
from genlab.metrics.likelihood import (
    bernoulli_log_likelihood,
    categorical_kl_uniform,
    gaussian_kl,
    gaussian_log_likelihood,
    importance_weighted_bound,
    log_categorical,
    log_normal,
    log_normal_mixture,
    log_standard_normal,
    parzen_log_likelihood,
    parzen_sigma,
    sample_chunks,
)

__all__ = [
    "LatentMoments",
    "StandardError",
    "active_units",
    "bernoulli_log_likelihood",
    "categorical_kl_uniform",
    "gaussian_kl",
    "gaussian_log_likelihood",
    "importance_weighted_bound",
    "log_categorical",
    "log_normal",
    "log_normal_mixture",
    "log_standard_normal",
    "parzen_log_likelihood",
    "parzen_sigma",
    "pearson",
    "sample_chunks",
]
