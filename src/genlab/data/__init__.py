"""Data modules: uint8 image tensors decoded once, kept on the device, batched by index."""

from genlab.data.base import InMemoryDataModule, TensorBatches
from genlab.data.celeba import CelebA
from genlab.data.digits import Digits
from genlab.data.folder import ImageFolder
from genlab.data.toy2d import Toy2D
from genlab.data.vision import CIFAR10, MNIST, FashionMNIST, TorchvisionData

__all__ = [
    "CIFAR10",
    "CelebA",
    "ImageFolder",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "InMemoryDataModule",
    "TensorBatches",
    "Toy2D",
    "TorchvisionData",
]
