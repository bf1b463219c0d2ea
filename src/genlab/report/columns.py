"""The metric vocabulary of reports and run summaries: the headline metrics with their
columns, units and formats, the feature-space suffixes of the sample scores, the probes."""

from __future__ import annotations

from collections.abc import Callable


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def _score(v: float) -> str:
    """FID / KID: one decimal from 1 up (genlab's spaces), three digits below (Inception KID)."""
    return f"{v:.1f}" if abs(v) >= 1 else f"{v:.3g}"


# Headline metrics, in this order: (name after "test/" or "val/", column, unit, format).
# A run shows each one it logged; which ones a family logs is in docs/models/README.md.
HEADLINES: list[tuple[str, str, str, Callable[[float], str]]] = [
    ("nll_iwae", "NLL (IWAE)", "nats", "{:.2f}".format),
    ("loglik", "log-lik.", "nats", "{:.2f}".format),
    ("elbo", "ELBO", "nats", "{:.2f}".format),
    ("bpd", "bits/dim", "", "{:.3f}".format),
    ("error_avg", "error", "", _pct),
    ("mse", "sq. error", "per image", "{:.2f}".format),
    ("cond_acc", "cond. acc.", "", _pct),
    ("recon_acc", "recon. acc.", "", _pct),
]
# FID / KID: the suffix of the score's name says its feature space (genlab.metrics.features).
SPACES = {"": "classifier", "_ae": "autoencoder", "_inception": "inception"}
# Precision / recall (k = 3), density / coverage (k = 5) in each feature space.
PRDC = [("precision", "prec."), ("recall", "recall"), ("density", "density"), ("coverage", "cov.")]
PROBES = [("linear_probe_acc", "linear probe"), ("knn_acc", "k-NN")]
