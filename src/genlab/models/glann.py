"""GLANN: generative latent nearest neighbours (Hoshen, Li & Malik 2019); docs/models/glann.md.

Two non-adversarial stages in one run, data as grey values x in [0, 1]:

1. GLO (Bojanowski et al. 2018), the first ``glo_epochs`` epochs: a generator
   G (sigmoid output) and one free code z_i per training image, on the unit sphere,
   minimise the Laplacian-pyramid L1 loss (:func:`genlab.nn.losses.lap1_loss`)

       glo_loss = mean_i Lap1(G(z_i), x_i),   z_i <- z_i / |z_i| after every step

   with separate learning rates for G (``lr_g``, Adam) and the codes (``lr_codes``,
   SparseAdam: only the codes of the batch move).
2. IMLE (Li & Malik 2018), the remaining epochs of ``trainer.max_epochs``: G and the
   codes are frozen; a mapper T (MLP, output projected to the sphere) learns to cover
   the codes from Gaussian noise e ~ N(0, I_noise_dim). For a batch of B codes, draw
   m = imle_samples_per_code * B noise vectors and pull each code's nearest mapped
   sample towards it:

       imle_nn_dist = mean_i min_k |z_i - T(e_k)|^2

Sampling is G(T(e)). Held-out images have no code: :meth:`GLANN.encode` starts each
from the nearest (pixel L2) of a fixed pool of decoded training codes and refines it
with ``encode_steps`` Adam steps on Lap1 through the frozen G.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.checks import (
    NetSpec,
    NonNegativeFloat,
    NonNegativeInt,
    OptimizerName,
    PositiveFloat,
    PositiveInt,
    check_args,
)
from genlab.data.transforms import eval_generator, to_unit
from genlab.errors import ConfigError, require_images
from genlab.models.common import GenlabModule, UnitImageCodec, make_optimizer
from genlab.nn import MLP, build_net
from genlab.nn.losses import lap1_loss

CODES_KEY = "glann_codes"  # the checkpoint entry holding the GLO code table


class CodeTable(nn.Module):
    """One learnable code per training example, ``weight`` (N, d), kept on the unit sphere.

    N is the training split's size, known only when fitting starts, so the table stays
    out of the state dict (whose shapes must not depend on the data: a resumed run is
    checked against a freshly built model) and travels in the checkpoint under its own
    key (:data:`CODES_KEY`, see ``GLANN.on_save_checkpoint`` / ``on_load_checkpoint``).
    Resizing keeps the same ``Parameter`` object, so optimisers keep referring to it.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(0, dim))

    def __len__(self) -> int:
        return self.weight.shape[0]

    def set_(self, codes: Tensor) -> None:
        """Replace the table (any N) in place of the same parameter."""
        self.weight.data = codes.to(self.weight.device, self.weight.dtype).contiguous()

    def forward(self, idx: Tensor) -> Tensor:
        """Codes of rows idx (B,) -> (B, d), with a sparse gradient (SparseAdam)."""
        return F.embedding(idx, self.weight, sparse=True)

    @torch.no_grad()
    def project_(self, idx: Tensor | None = None) -> None:
        """Back onto the unit sphere: rows idx, or every row."""
        w = self.weight.data
        if idx is None:
            w.copy_(F.normalize(w, dim=1))
        else:
            w[idx] = F.normalize(w[idx], dim=1)

    # Not part of the state dict (see the class docstring).
    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: D102
        pass

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        pass


class GLANN(UnitImageCodec, GenlabModule):
    """GLO generator + per-image codes on the sphere, then an IMLE noise-to-code mapper.
    Data space as the auto-encoders' (``UnitImageCodec``: grey values in [0, 1]);
    ``encode`` / ``decode`` are its own."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        latent_dim: PositiveInt = 32,
        net: NetSpec | None = None,
        glo_epochs: PositiveInt = 20,
        code_init: Literal["pca", "random"] = "pca",
        lap_levels: PositiveInt = 3,
        lr_g: PositiveFloat = 1e-3,
        lr_codes: PositiveFloat = 1e-2,
        noise_dim: PositiveInt = 32,
        imle_hidden_sizes: Sequence[PositiveInt] = (256, 256),
        imle_samples_per_code: PositiveInt = 10,
        lr_imle: PositiveFloat = 1e-3,
        encode_steps: NonNegativeInt = 30,
        encode_lr: PositiveFloat = 0.03,
        encode_pool: PositiveInt = 512,
        optimizer: OptimizerName = "Adam",
        weight_decay: NonNegativeFloat = 0.0,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.data_shape = tuple(data_shape)
        require_images("model=glann", self.data_shape)  # Lap1 is a loss on images
        self.automatic_optimization = False  # three optimisers, stepped by hand
        self.generator = build_net(net).decoder(latent_dim, self.data_shape)  # logits
        self.mapper = MLP(imle_hidden_sizes).encoder((noise_dim,), latent_dim)  # T
        self.codes = CodeTable(latent_dim)
        # Start points for encode(): a fixed subset of the training codes (refreshed after
        # every GLO step; random unit vectors before fitting). Saved with the weights.
        g = torch.Generator().manual_seed(0)
        self.register_buffer(
            "pool_codes", F.normalize(torch.randn(encode_pool, latent_dim, generator=g), dim=1)
        )
        self.register_buffer("pool_rows", torch.zeros(0, dtype=torch.long), persistent=False)

    # ---- networks ---------------------------------------------------------------------
    def decode(self, z: Tensor) -> Tensor:
        """G(z / |z|): codes (B, d) -> images (B, *data_shape) in [0, 1]. Inputs are
        projected onto the sphere G was trained on (a linear latent path decodes as its
        normalised path)."""
        return torch.sigmoid(self.generator(F.normalize(z, dim=1)))

    def map_noise(self, e: Tensor) -> Tensor:
        """T(e) / |T(e)|: noise (B, noise_dim) -> codes (B, d) on the sphere."""
        return F.normalize(self.mapper(e), dim=1)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(n, self.hparams.noise_dim, generator=generator, device=self.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """G(T(e)), e ~ N(0, I): (n, *data_shape) in [0, 1]."""
        return self.decode(self.map_noise(self.noise(n, generator)))

    @torch.no_grad()
    def nearest_pool_codes(self, x: Tensor) -> Tensor:
        """For each image of x (B, *data_shape), the pool code whose decoded image is
        nearest in pixel L2: (B, d)."""
        pool = self.decode(self.pool_codes).flatten(1)
        return self.pool_codes[torch.cdist(x.flatten(1).float(), pool.float()).argmin(1)]

    def encode(self, x: Tensor, steps: int | None = None) -> Tensor:
        """The code of each image x (B, *data_shape) in [0, 1]: (B, d) on the sphere.

        Starts from :meth:`nearest_pool_codes`, then ``encode_steps`` (or ``steps``) Adam
        steps (lr ``encode_lr``) on Lap1(G(z), x) with G frozen, projecting z onto the
        sphere after each. Works inside no-grad and inference-mode code; G's parameters
        and their gradients are left as they were. Deterministic (no random draws).
        """
        hp = self.hparams
        steps = hp.encode_steps if steps is None else steps
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().float()  # a normal tensor, even from inference mode
            z = self.nearest_pool_codes(x).clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=hp.encode_lr)
            for _ in range(steps):
                loss = lap1_loss(self.decode(z), x, hp.lap_levels).sum()
                z.grad = torch.autograd.grad(loss, [z])[0]  # only z: G's grads untouched
                opt.step()
                with torch.no_grad():
                    z.copy_(F.normalize(z, dim=1))
        return z.detach()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    # ---- objectives -------------------------------------------------------------------
    def glo_loss(self, x: Tensor, z: Tensor) -> Tensor:
        """mean over the batch of Lap1(G(z), x)."""
        return lap1_loss(self.decode(z), x, self.hparams.lap_levels).mean()

    def imle_nn_dist(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """mean_i min_k |z_i - T(e_k)|^2 over m = imle_samples_per_code * B noise draws;
        differentiable in T through each code's nearest sample."""
        y = self.map_noise(self.noise(self.hparams.imle_samples_per_code * z.shape[0], generator))
        with torch.no_grad():
            nearest = torch.cdist(z.float(), y.float()).argmin(1)
        return (z - y[nearest]).pow(2).sum(1).mean()

    # ---- fitting ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Size the code table for the training split (and initialise it) when fitting."""
        if stage != "fit":
            return
        if self.trainer.world_size > 1:
            raise ConfigError(
                "model=glann trains in one process: its per-image codes are not kept in "
                f"step across {self.trainer.world_size} processes; use trainer=cpu or "
                "trainer=gpu (trainer.devices=1)"
            )
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or "train" not in getattr(dm, "splits", {}):
            raise ConfigError(
                "model=glann keeps one code per training image and needs a genlab data "
                "module (trainer.fit(model, datamodule=...)) to size them"
            )
        x = dm.splits["train"][0]
        if len(self.codes) != x.shape[0]:  # else: codes from a checkpoint, kept
            self.set_codes(self.initial_codes(x))
        self.refresh_pool()

    @torch.no_grad()
    def initial_codes(self, x: Tensor) -> Tensor:
        """(N, d) unit codes for the uint8 training images x: their projections on the
        top principal components (``code_init=pca``, fitted on up to 10,000 images; GLO's
        choice) or Gaussian draws (``random``), normalised."""
        n, d = x.shape[0], self.hparams.latent_dim
        if self.hparams.code_init == "random":
            return F.normalize(torch.randn(n, d), dim=1)
        flat = to_unit(x.cpu()).flatten(1)
        fit = flat[torch.linspace(0, n - 1, min(n, 10000)).long()].double()
        mean = fit.mean(0)
        cov = (fit - mean).T @ (fit - mean) / fit.shape[0]
        _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
        k = min(d, vecs.shape[1])
        basis = vecs[:, -k:].flip(1).float()  # (D, k), the top k components first
        z = torch.cat([(b - mean.float()) @ basis for b in flat.split(8192)])
        if k < d:  # more code dimensions than pixels: small random remainder
            z = torch.cat([z, 1e-3 * z.norm(dim=1, keepdim=True) * torch.randn(n, d - k)], 1)
        return F.normalize(z, dim=1)

    def set_codes(self, codes: Tensor) -> None:
        """Replace the code table (N, d) and choose encode's pool rows: ``encode_pool``
        evenly spaced rows."""
        self.codes.set_(codes)
        p, device = self.pool_codes.shape[0], self.pool_codes.device
        self.pool_rows = torch.linspace(0, len(codes) - 1, p, device=device).round().long()

    @torch.no_grad()
    def refresh_pool(self) -> None:
        """pool_codes <- the pool rows of the code table (none before fitting)."""
        if self.pool_rows.numel() > 0:
            self.pool_codes.copy_(self.codes.weight.detach()[self.pool_rows])

    def on_fit_start(self) -> None:
        if self.trainer.fast_dev_run:
            return  # one step that runs both stages
        max_epochs, glo = self.trainer.max_epochs, self.hparams.glo_epochs
        if max_epochs is not None and 0 <= max_epochs <= glo:
            raise ConfigError(
                f"model=glann trains GLO for model.glo_epochs={glo} epochs and the IMLE mapper "
                f"for the rest of trainer.max_epochs={max_epochs}, which leaves none: set "
                f"trainer.max_epochs above {glo} or model.glo_epochs below {max_epochs}"
            )

    def stages(self) -> tuple[bool, bool]:
        """(GLO step, IMLE step) for the current batch: by epoch, both under fast_dev_run."""
        if self.trainer.fast_dev_run:
            return True, True
        glo = self.current_epoch < self.hparams.glo_epochs
        return glo, not glo

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x_raw, _, idx = batch
        opt_g, opt_codes, opt_t = self.optimizers()
        glo, imle = self.stages()
        values: dict[str, Tensor] = {}
        if glo:
            loss = self.glo_loss(self.preprocess(x_raw), self.codes(idx))
            opt_g.zero_grad(set_to_none=True)
            opt_codes.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_g.step()
            opt_codes.step()
            self.codes.project_(idx)
            self.refresh_pool()
            values["glo_loss"] = loss.detach()
        if imle:
            loss = self.imle_nn_dist(self.codes.weight.detach()[idx])
            opt_t.zero_grad(set_to_none=True)
            self.manual_backward(loss)
            opt_t.step()
            values["imle_nn_dist"] = loss.detach()
        total = sum(values.values())
        self.log_train({"loss": total, **values})
        return total

    @torch.no_grad()
    def batch_metrics(self, batch, batch_idx: int, full: bool = False) -> dict[str, Tensor]:
        """Held-out images, encoded (:meth:`encode`): ``recon`` (= ``loss``) = Lap1 of the
        reconstruction, ``mse`` = squared error summed over pixels, and ``imle_nn_dist``
        = mean squared distance of each code to its nearest of imle_samples_per_code * B
        mapped noise draws (fixed per batch index): how well T covers unseen codes."""
        x = self.preprocess(batch[0])
        z = self.encode(x)
        out = self.decode(z)
        recon = lap1_loss(out, x, self.hparams.lap_levels).mean()
        mse = (out - x).pow(2).flatten(1).sum(1).mean()
        nn_dist = self.imle_nn_dist(z, eval_generator(x.device, batch_idx))
        return {"loss": recon, "recon": recon, "mse": mse, "imle_nn_dist": nn_dist}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        return [
            make_optimizer(self.generator.parameters(), hp.optimizer, hp.lr_g, hp.weight_decay),
            torch.optim.SparseAdam([self.codes.weight], lr=hp.lr_codes),
            make_optimizer(self.mapper.parameters(), hp.optimizer, hp.lr_imle, hp.weight_decay),
        ]

    # ---- checkpoints ------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[CODES_KEY] = self.codes.weight.detach().cpu()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        codes = checkpoint.get(CODES_KEY)
        if codes is not None:
            self.set_codes(codes)  # pool_codes itself comes with the state dict
