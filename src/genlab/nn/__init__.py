"""Plain nn building blocks shared by model families."""

from genlab.nn.nets import MLP, Conv, ResNet, build_net

__all__ = ["MLP", "Conv", "ResNet", "build_net"]
