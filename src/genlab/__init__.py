"""genlab: a Hydra-configured experiment runner for deep generative models on Lightning."""

import os

__version__ = "0.1.0"

# Seen before Lightning is imported (it sets this variable itself on import); see train.py.
USER_NVML_CHECK = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")

from genlab.run_name import register as _register_run_name  # noqa: E402

_register_run_name()  # ${genlab_run_name:...} in the run folder's name, before any compose
