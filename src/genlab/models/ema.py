"""Exponential moving averages of a model's sampling-side nets (GAN generators, diffusion
denoisers), kept inside the LightningModule.

Why not Lightning's ``EMAWeightAveraging`` callback: it averages the whole module (a
GAN's critic too, which nothing samples from), has no copy phase or decay warm-up, and
swaps weights around validation only; genlab's scores, grids, ``sample()`` and ``eval.py``
must use the average wherever the model is in evaluation mode, the trained weights must
stay one call away (``{split}/fid_raw``), and a checkpoint must load without the callback.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn


class AveragedNets:
    """Mixin for a LightningModule: ``ema_of`` names the nets to average.

    ``hparams.ema_decay`` (0: off) and ``hparams.ema_start`` (updates that copy the
    weights before averaging begins) configure it; call :meth:`build_ema` after the nets
    exist, :meth:`update_ema` after each optimiser step of those nets, and
    :meth:`migrate_ema_state` from ``on_load_checkpoint``.
    """

    ema_of: tuple[str, ...] = ()

    def build_ema(self) -> None:
        """Averaged copies of the nets in ``ema_of`` (``self.ema[name]``), saved with the
        checkpoint; ``ema_count`` counts the averaging updates."""
        self.use_ema = self.hparams.get("ema_decay", 0) > 0
        if self.use_ema:
            nets = {n: copy.deepcopy(getattr(self, n)) for n in self.ema_of}
            self.ema = nn.ModuleDict(nets).requires_grad_(False)
            self.register_buffer("ema_count", torch.zeros((), dtype=torch.long))

    def active_net(self, name: str) -> nn.Module:
        """The net ``name`` to run: its EMA copy in evaluation mode (unless inside
        :meth:`raw_weights`), the trained one otherwise."""
        if self.use_ema and not self.training and name in self.ema:
            return self.ema[name]
        return getattr(self, name)

    @contextlib.contextmanager
    def raw_weights(self) -> Iterator[None]:
        """``with model.raw_weights():`` evaluation uses the trained (not averaged) nets."""
        use, self.use_ema = self.use_ema, False
        try:
            yield
        finally:
            self.use_ema = use

    def weights(self, ema: bool = True) -> contextlib.AbstractContextManager:
        """``with model.weights(ema):`` the averaged nets (True, in evaluation mode) or
        the trained ones (False): what ``sample(..., ema=...)`` draws with."""
        return contextlib.nullcontext() if ema else self.raw_weights()

    @property
    def ema_own_buffers(self) -> tuple[str, ...]:
        """Nets whose averaged copies keep their own buffers (not copied from the trained
        net at each update), e.g. a GAN generator's recomputed batch-norm statistics."""
        return ()

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- d * ema + (1 - d) * raw, a plain copy for the first ``ema_start``
        updates (the random initial weights never enter the average), then
        d = min(ema_decay, (1 + t) / (10 + t)) at t updates after the start: the averaging
        window grows with the run (TensorFlow's ExponentialMovingAverage with
        num_updates), so short runs are not averaged over weights far behind. Buffers are
        copied. On the device: no host sync."""
        hp = self.hparams
        t = (self.ema_count - hp.get("ema_start", 0)).float()
        decay = torch.clamp((1 + t) / (10 + t), max=hp.ema_decay)
        w = torch.where(t < 0, 1.0, 1.0 - decay)
        own = self.ema_own_buffers
        for name in self.ema_of:
            ema, raw = self.ema[name], getattr(self, name)
            for e, p in zip(ema.parameters(), raw.parameters(), strict=True):
                e.lerp_(p.detach(), w.to(e.dtype))
            if name not in own:
                for e, b in zip(ema.buffers(), raw.buffers(), strict=True):
                    e.copy_(b)
        self.ema_count += 1

    def migrate_ema_state(self, checkpoint: dict) -> None:
        """Checkpoints written without an average: start it at the weights; loaded with
        ``ema_decay=0``: drop the average."""
        state = checkpoint.get("state_dict", {})
        has_ema = any(k.startswith("ema.") for k in state)
        if self.use_ema and not has_ema:
            for k, v in list(state.items()):
                if k.split(".")[0] in self.ema_of:
                    state[f"ema.{k}"] = v.clone()
            state["ema_count"] = torch.tensor(self.hparams.get("ema_start", 0), dtype=torch.long)
        elif not self.use_ema and has_ema:
            for k in [k for k in state if k.startswith("ema.") or k == "ema_count"]:
                del state[k]
