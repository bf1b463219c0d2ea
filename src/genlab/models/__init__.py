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
from genlab.models.made import MADE
from genlab.models.ogan import OGAN
from genlab.models.pixelcnn import PixelCNN
from genlab.models.rbm import RBM
from genlab.models.vae import VAE
from genlab.models.vib import VIB
from genlab.models.vqvae import VQVAE

__all__ = [
    "AAE",
    "AE",
    "ALI",
    "CVAE",
    "DBN",
    "DDPM",
    "GAN",
    "GLANN",
    "MADE",
    "NICE",
    "OGAN",
    "PixelCNN",
    "RBM",
    "VAE",
    "VIB",
    "VQVAE",
    "Flow",
    "FlowMatching",
    "Glow",
    "GumbelVAE",
    "InfoMax",
    "RealNVP",
]
