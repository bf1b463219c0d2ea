"""Model families: one LightningModule (or one family of them) per file."""

from genlab.models.ae import AE
from genlab.models.cvae import CVAE
from genlab.models.flow import NICE, Flow, Glow, RealNVP
from genlab.models.gumbel_vae import GumbelVAE
from genlab.models.vae import VAE

__all__ = ["AE", "CVAE", "NICE", "VAE", "Flow", "Glow", "GumbelVAE", "RealNVP"]
