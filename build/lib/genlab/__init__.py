"""genlab: a Hydra-configured experiment runner for deep generative models on Lightning."""

import os

__version__ = "0.1.0"

# Seen before Lightning is imported (it sets this variable itself on import); see train.py.
USER_NVML_CHECK = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
