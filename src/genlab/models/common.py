"""Pieces several families share: the base class and its evaluation contract,
optimiser construction, step-metric logging and the pixel likelihoods of the
latent-variable models."""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Iterable

import lightning.pytorch as pl
import torch
from torch import Tensor

from genlab._lightning import step_logs_due
from genlab.data.transforms import binarize, to_unit, unit_image
from genlab.errors import ConfigError
from genlab.metrics import StandardError, bernoulli_log_likelihood, gaussian_log_likelihood


class GenlabModule(pl.LightningModule):
    """Base of every family.

    The evaluation contract: ``batch_metrics(batch, batch_idx, full=False)`` returns the
    held-out metrics of one batch, ``{name: batch mean}``. ``validation_step`` logs them
    as ``val/<name>``, ``test_step`` as ``test/<name>`` with ``full=True`` (which adds
    the costly test-time estimates, e.g. the IWAE bound), ``callbacks=test_curve`` as
    ``curve/test_<name>``, and ``eval.py`` runs the test step. ``training_step`` logs its
    terms with :meth:`log_train` (``train/<name>``, averaged over each logging window).

    Checkpoints say which family wrote them, and ``load_from_checkpoint`` loads safely
    (``weights_only``), maps renamed hyper-parameters of older checkpoints, and refuses
    another family's checkpoint with one line instead of a state-dict traceback.
    """

    def __init__(self) -> None:
        super().__init__()
        self.train_window = StepMetrics()

    # ---- torch.compile (compile=true) -------------------------------------------------
    # The networks on the training path that torch.compile may compile, by attribute path;
    # families add theirs or say why one stays eager (compile_targets).
    compile_nets: tuple[str, ...] = (
        "encoder", "decoder", "generator", "denoiser", "flow", "mapper", "net.encoder",
        "local_net", "global_net",
    )  # fmt: skip

    def compile_targets(self) -> dict[str, str | None]:
        """{submodule path: None to compile it, or the reason it stays eager}."""
        out: dict[str, str | None] = {}
        for name in self.compile_nets:
            try:
                self.get_submodule(name)
            except AttributeError:
                continue
            out[name] = None
        return out

    # ---- evaluation: one method, every caller -------------------------------------------
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """Held-out metrics of one batch: {name: batch mean} (nats per image, bits/dim,
        ...); evaluation noise comes from generators seeded by ``batch_idx``. At test
        time (``full``) a family may add ``"per_image": {name: (B,)}`` for its stochastic
        estimates: their standard errors are logged as ``test/<name>_se``."""
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log_eval("val", self.batch_metrics(batch, self.eval_batch_idx(batch_idx)), batch)

    def test_step(self, batch, batch_idx: int) -> None:
        metrics = self.batch_metrics(batch, self.eval_batch_idx(batch_idx), full=True)
        per_image = metrics.pop("per_image", None)  # {name: (B,)} of stochastic estimates
        self.log_eval("test", metrics, batch)
        if per_image:
            self.log_standard_errors("test", per_image, batch)

    def eval_batch_idx(self, batch_idx: int) -> int:
        """The index of this evaluation batch in one process's order: under DDP, rank r's
        i-th batch is batch i * world_size + r (genlab's loaders deal whole batches out),
        so the seeded evaluation noise and the numbers are those of one process."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return batch_idx
        return batch_idx * trainer.world_size + trainer.global_rank

    @staticmethod
    def eval_weight(batch) -> float:
        """How many images of an evaluation batch count: all but the padding rows
        (``idx = -1``) a rank short of a batch runs (0 for a padding batch).

        A float on purpose: Lightning 2.6 averages the summed batch sizes across ranks in
        the count's own dtype, and an integer count loses the remainder (179 images on two
        ranks became 178), skewing every DDP mean."""
        if len(batch) > 2 and isinstance(batch[2], Tensor) and batch[2].numel():
            return float((batch[2] >= 0).sum())  # one read-back per evaluation batch
        return float(batch[0].shape[0])

    def log_eval(self, split: str, metrics: dict[str, Tensor], batch) -> None:
        """Epoch means of held-out metrics, weighted by the images they cover, reduced
        across ranks (the same images and weights as in one process)."""
        values = {f"{split}/{k}": v for k, v in metrics.items()}
        self.log_dict(values, batch_size=self.eval_weight(batch), sync_dist=True)

    def log_standard_errors(self, split: str, values: dict[str, Tensor], batch) -> None:
        """``{split}/<name>_se``: the standard error over the split's images of each
        per-image estimate in ``values`` ({name: (B,)}), beside the logged mean (padding
        rows of DDP ranks left out; reduced across processes at the epoch's end). It
        includes the estimator's own noise (importance sampling, strata, probes)."""
        keep = batch[2] >= 0 if len(batch) > 2 and isinstance(batch[2], Tensor) else None
        if not hasattr(self, "_standard_errors"):
            self._standard_errors = torch.nn.ModuleDict()
        for name, v in values.items():
            key = f"{split}__{name}"
            if key not in self._standard_errors:
                self._standard_errors[key] = StandardError().to(v.device)
            metric = self._standard_errors[key]
            metric.update(v[keep] if keep is not None and keep.shape == v.shape else v)
            self.log(
                f"{split}/{name}_se", metric, on_step=False, on_epoch=True,
                metric_attribute=f"_standard_errors.{key}",
            )  # fmt: skip

    def log_train(self, values: dict[str, Tensor]) -> None:
        """Training terms as ``train/<name>``: means over each logging window."""
        self.train_window(self, {f"train/{k}": v for k, v in values.items()})

    # ---- checkpoints --------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        from genlab.checkpoints import FAMILY_KEY, family_of

        checkpoint[FAMILY_KEY] = family_of(type(self))

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **kwargs):  # noqa: D102
        """Lightning's loader with safe unpickling, the family checked by name, renamed
        hyper-parameters migrated, and only classes of genlab, of ``cls``'s package and of
        ``$GENLAB_TRUSTED_PACKAGES`` built (a checkpoint's ``net.arch`` can name any
        factory)."""
        from genlab.checkpoints import check_family, migrated, read_checkpoint
        from genlab.trust import only_trusted

        with only_trusted([cls.__module__.split(".")[0]]):
            if isinstance(checkpoint_path, (str, os.PathLike)):
                ckpt = read_checkpoint(checkpoint_path)
                check_family(ckpt, cls, checkpoint_path)
                checkpoint_path = migrated(ckpt, checkpoint_path)
            kwargs.setdefault("weights_only", True)
            return super().load_from_checkpoint(checkpoint_path, map_location, **kwargs)


class Staged:
    """Mixin of the families trained in stages within one run (DBN, VQ-VAE): the stage
    as a buffer, so checkpoints know it, and its host copy, so training steps never read
    the buffer back (a device sync per step on GPUs); re-read after any state load."""

    def init_stage(self) -> None:
        self.register_buffer("stage", torch.tensor(0))
        self._stage: int | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module._forget_stage())

    def _forget_stage(self) -> None:
        self._stage = None

    @property
    def current_stage(self) -> int:
        if self._stage is None:
            self._stage = int(self.stage)
        return self._stage

    def set_stage(self, stage: int) -> None:
        self.stage.fill_(stage)
        self._stage = stage


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float,
    **kwargs: object,
) -> torch.optim.Optimizer:
    """``torch.optim.<name>(params, lr=lr, weight_decay=weight_decay, **kwargs)``;
    kwargs are e.g. ``betas``, ``momentum``, ``eps`` (``model.optimizer_kwargs``).

    Optimizers with a fused implementation (Adam, AdamW, SGD, ... on CPU and CUDA) use it
    (``fused=True``: one kernel updates every parameter instead of a dozen per tensor
    group; +13% images/s for the MNIST MLP VAE on a CPU); ``optimizer_kwargs.fused=false``
    keeps torch's default. Where this torch can't fuse, the default is used."""
    cls = getattr(torch.optim, name)
    params = list(params)
    fusable = "fused" in inspect.signature(cls).parameters and "fused" not in kwargs
    if fusable and all(p.is_floating_point() for p in params):
        try:
            return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass  # e.g. no fused kernel for this device in this torch: the default below
    try:
        return cls(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.optimizer_kwargs={kwargs!r} do not fit {name}: {e}") from None


def with_lr_decay(
    opt: torch.optim.Optimizer, lr: float, lr_final: float | None, max_epochs: int | None
) -> torch.optim.Optimizer | dict:
    """``opt``, or with ``lr_final`` an exponential decay from lr to lr_final over the run's
    epochs (NICE: 1e-3 -> 1e-4), in ``configure_optimizers``'s return format."""
    if lr_final is None:
        return opt
    epochs = max(1, (max_epochs or 1) - 1)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, (lr_final / lr) ** (1 / epochs))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


def adam_betas(name: str, betas: Iterable[float]) -> dict[str, tuple[float, ...]]:
    """``{"betas": betas}`` for the Adam family (Adam, AdamW, ...), else nothing: the
    families' ``model.betas`` applies only where the optimiser has them."""
    return {"betas": tuple(betas)} if "Adam" in name else {}


class StepMetrics:
    """Training-step metrics averaged on the device over each logging window.

    Lightning's ``self.log`` costs about half a millisecond per call on a CPU, which is
    a tenth of a small model's step. Step metrics only reach the loggers every
    ``log_every_n_steps`` steps anyway, so this keeps one running sum (two small ops a
    step, no host sync) and calls ``log`` once per window with the window means: less
    noise, same cost as a hand-written loop. (Nothing is logged with ``prog_bar=True``:
    Lightning reads those back after every step; genlab's ProgressBar reads them itself.)
    """

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.total: torch.Tensor | None = None  # (len(keys),) sums over the window
        self.count = 0
        self.defer = False  # genlab.steps: more optimizer steps follow in this batch

    def __call__(self, module, values: dict[str, torch.Tensor]) -> None:
        v = torch.stack([t.detach().float() for t in values.values()])
        if self.total is None or list(values) != self.keys:
            self.keys, self.total, self.count = list(values), torch.zeros_like(v), 0
        self.total.add_(v)
        self.count += 1
        if not self.defer and step_logs_due(module.trainer):
            means = self.total / self.count
            for i, k in enumerate(self.keys):
                module.log(k, means[i], on_step=True, on_epoch=False, batch_size=1)
            self.total, self.count = None, 0


class PixelLikelihood:
    """Decoder-side methods of the latent-variable families (VAE, CVAE, GumbelVAE).

    ``hparams.likelihood`` is ``bernoulli`` (data binarised on the device, decoder
    outputs logits) or ``gaussian`` (data in [0, 1], decoder outputs the mean, std
    ``exp(log_sigma)``). Subclasses call ``init_likelihood`` in ``__init__`` and define
    ``decoder``.
    """

    def init_likelihood(self, sigma: float, learn_sigma: bool) -> None:
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma:
            self.log_sigma = torch.nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> model input: binary {0, 1} (Bernoulli) or [0, 1] (Gaussian);
        continuous (float) data pass as they are."""
        if x.dtype != torch.uint8:
            return x.float()
        return binarize(x, generator) if self.hparams.likelihood == "bernoulli" else to_unit(x)

    def to_image(self, x: Tensor) -> Tensor:
        """Model space -> [0, 1] for image grids."""
        return unit_image(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, d) codes -> decoder output (B, *data_shape): logits (Bernoulli) or mean."""
        return self.decoder(z)

    def mean(self, out: Tensor) -> Tensor:
        """Decoder output -> E[x|z] in data space."""
        return torch.sigmoid(out) if self.hparams.likelihood == "bernoulli" else out

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) summed over pixels: (B,)."""
        if self.hparams.likelihood == "bernoulli":
            return bernoulli_log_likelihood(out, x)
        return gaussian_log_likelihood(out, x, self.log_sigma)


class UnitImageCodec:
    """Data-space and code methods of the deterministic auto-encoders (AE, AAE): data in
    [0, 1], ``encoder``: x -> (B, d) codes, ``decoder``: codes -> (B, *data_shape)."""

    def preprocess(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """uint8 batch -> [0, 1]; continuous (float) data pass as they are."""
        return to_unit(x) if x.dtype == torch.uint8 else x.float()

    def to_image(self, x: Tensor) -> Tensor:
        return unit_image(x)

    def encode(self, x: Tensor) -> Tensor:
        """(B, *data_shape) -> (B, d)."""
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:
        """(B, d) -> decoder output (B, *data_shape): logits (BCE) or the image (MSE)."""
        return self.decoder(z)
