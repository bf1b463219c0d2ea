"""Model families: one LightningModule (or one family of them) per file."""

from genlab.models.aae import AAE
from genlab.models.ae import AE
from genlab.models.ali import ALI
from genlab.models.cvae import CVAE
from genlab.models.dbn import DBN
from genlab.models.ddpm import DDPM
from genlab.models.flow import NICE, Flow, Glow, RealNVP
from genlab.models.flow_matching import FlowMatching
from genlab.models.gan import GAN
from genlab.models.glann import GLANN
from genlab.models.gumbel_vae import GumbelVAE
from genlab.models.infomax import InfoMax
from genlab.models.ogan import OGAN
from genlab.models.rbm import RBM
from genlab.models.vae import VAE
from genlab.models.vib import VIB

__all__ = [
    "AAE",
    "AE",
    "ALI",
    "CVAE",
    "DBN",
    "DDPM",
    "GAN",
    "GLANN",
    "NICE",
    "OGAN",
    "RBM",
    "VAE",
    "VIB",
    "Flow",
    "FlowMatching",
    "Glow",
    "GumbelVAE",
    "InfoMax",
    "RealNVP",
]
