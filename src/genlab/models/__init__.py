"""Model families: one LightningModule (or one family of them) per file."""

from genlab.models.ae import AE
from genlab.models.flow import NICE, Flow, Glow, RealNVP
from genlab.models.vae import VAE

__all__ = ["AE", "NICE", "VAE", "Flow", "Glow", "RealNVP"]
