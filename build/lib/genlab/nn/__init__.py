"""Plain nn building blocks shared by model families."""

from genlab.nn.nets import MLP, Conv, ResNet, build_net
from genlab.nn.unet import TimeMLP, UNet

__all__ = ["MLP", "Conv", "ResNet", "TimeMLP", "UNet", "build_net"]
