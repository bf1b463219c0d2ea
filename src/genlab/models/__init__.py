"""Model families: one LightningModule per file."""

from genlab.models.ae import AE
from genlab.models.vae import VAE

__all__ = ["AE", "VAE"]
