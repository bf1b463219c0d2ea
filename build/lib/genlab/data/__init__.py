"""Data modules: uint8 image tensors decoded once, kept on the device, batched by index."""

from genlab.data.base import InMemoryDataModule, TensorBatches
from genlab.data.digits import Digits
from genlab.data.toy2d import Toy2D
from genlab.data.vision import CIFAR10, MNIST, FashionMNIST, TorchvisionData

__all__ = [
    "CIFAR10",
    "MNIST",
    "Digits",
    "FashionMNIST",
    "InMemoryDataModule",
    "TensorBatches",
    "Toy2D",
    "TorchvisionData",
]
