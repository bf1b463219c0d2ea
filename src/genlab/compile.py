"""``compile=true``: torch.compile the family's networks, not the LightningModule.

Compiling the module itself breaks manual optimisation in Lightning 2.6 (its
toggle_optimizer, Lightning #21513); compiling each network's forward in place keeps
the state-dict keys, so checkpoints are the same with or without it. Only training mode
runs the compiled code: evaluation (sampling, IWAE chunks, scores) calls the networks
with ever other batch shapes, which would recompile again and again. Each family names
its networks (``compile_targets``) or says why one stays eager; errors while tracing
fall back to eager code (``suppress_errors``) with PyTorch's own warning. Dropout draws
differ between compiled and eager code (the compiled kernels use their own random
streams), so runs of nets with dropout (the U-Net's) match only in distribution.
"""

from __future__ import annotations

import logging
import typing

import torch
from torch import nn

from genlab.checks.types import CompileMode
from genlab.errors import ConfigError

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = typing.get_args(CompileMode)


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"compile_mode={mode!r} is not one of {' | '.join(MODES)}")


def compile_networks(model: nn.Module, mode: str = "default") -> list[str]:
    """Compile ``model``'s networks in place; log one line saying which ones, and which
    stayed eager and why. Returns the compiled paths."""
    check_mode(mode)
    family = type(model).__name__
    targets = model.compile_targets() if hasattr(model, "compile_targets") else {}
    compiled = [name for name, why in targets.items() if why is None]
    eager = {name: why for name, why in targets.items() if why is not None}
    if not compiled:
        log.info(
            f"compile: {family} has no network for torch.compile"
            + (f" ({'; '.join(f'{k}: {v}' for k, v in eager.items())})" if eager else "")
            + "; running eager"
        )
        return []
    torch._dynamo.config.suppress_errors = True  # a trace that fails runs eager instead
    for name in compiled:
        compile_for_training(model.get_submodule(name), mode)
    left = "".join(f"; {k} stays eager: {v}" for k, v in eager.items())
    log.info(f"compile: {family}: {', '.join(compiled)} compiled (mode {mode}){left}")
    return compiled


def compile_for_training(net: nn.Module, mode: str = "default") -> None:
    """``net.forward`` compiled while ``net.training``, eager otherwise (an instance
    attribute: not in the state dict)."""
    eager = net.forward
    compiled = torch.compile(eager, mode=mode)

    def forward(*args, **kwargs):
        return compiled(*args, **kwargs) if net.training else eager(*args, **kwargs)

    net.forward = forward
