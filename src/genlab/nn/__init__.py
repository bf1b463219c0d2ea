"""Plain nn building blocks shared by model families."""

from genlab.nn.nets import MLP, Conv, build_net

__all__ = ["MLP", "Conv", "build_net"]
