"""Score callbacks: FID / KID of samples, conditional accuracy and latent probes
(:class:`SampleScores`, settings under ``metrics.*``), and learning curves on another
split (:class:`SplitCurve`, ``callbacks=test_curve``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from genlab.callbacks.training import is_due
from genlab.checks import NonNegativeInt, PositiveInt, Seed, check_args
from genlab.errors import ConfigError

PROBES = ("linear_probe_acc", "knn_acc", "mlp_probe_acc")  # test/<name>, see probe_scores


class SampleScores(pl.Callback):
    """FID / KID of samples, conditional and reconstruction accuracy, latent probes
    (``metrics.*``).

    - ``val/fid``, ``val/kid``: ``n_val`` samples against ``n_val`` validation images
      (None: the model's ``val_score_samples``, else 1000; DDPM and flow matching: 250),
      every ``every_n_epochs`` epochs and after the last; ``test/fid``, ``test/kid``
      with ``n_test`` at test time.
    - ``{split}/fid_<variant>``, ``{split}/kid_<variant>``: the model's other samplers
      (``sample_variants(split)``; GANs: ``fid_raw``, the trained generator next to its EMA).
    - ``{split}/cond_acc``: models with ``sample_conditional(labels, generator)``.
    - ``{split}/recon_acc``: models with ``reconstruct(x)`` (VAEs, AEs, ALI's G(E(x))...):
      the feature network's accuracy on the reconstructions of ``n_val`` / ``n_test``
      images of the split against the labels of the originals (does a round trip through
      the code keep the digit's identity?).
    - ``test/linear_probe_acc``, ``test/knn_acc``, ``test/mlp_probe_acc``: models with
      ``encode``, samplers or not (logistic regression, a 5-NN vote and a one-hidden-layer
      classifier fitted on the frozen codes of ``n_probe_train`` training images, scored
      on the test split).

    FID / KID and cond_acc apply to models of images that can ``sample``, recon_acc to
    those that ``reconstruct``, the probes to models of images that ``encode``; anything
    else is skipped silently.
    Feature spaces (``features``, ``metrics.features``; the space is in the score's name, so
    numbers from different spaces can't be mixed up in a table): ``classifier`` (genlab's
    per-data-set CNN classifier, trained and cached on first use): ``fid``, ``kid``;
    ``autoencoder`` (the same CNN trained as an auto-encoder, for data without labels):
    ``fid_ae``, ``kid_ae``; ``inception`` (torchmetrics' Inception, needs its weights):
    ``fid_inception``, ``kid_inception``; ``auto`` (default): the classifier when the data
    has labels, else the auto-encoder (``genlab``: the classifier, as older configs say).
    cond_acc, recon_acc and the probes need labels (and use the classifier). The networks
    live here, frozen: never in the optimiser or the model's checkpoint. Real features are
    cached per data set, split, size and feature network. Under DDP the ranks share the
    FID / KID work (features gathered across ranks); cond_acc, recon_acc and the probes
    run on rank 0.
    """

    def __init__(
        self,
        cache_dir: str = "data/feature_nets",
        features: Literal["auto", "classifier", "autoencoder", "inception", "genlab"] = "auto",
        every_n_epochs: NonNegativeInt = 5,
        n_val: PositiveInt | None = None,
        n_test: PositiveInt = 10000,
        probes: bool = True,
        n_probe_train: PositiveInt = 10000,
        kid_subset_size: PositiveInt = 1000,
        feature_epochs: PositiveInt = 5,
        seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "callbacks.sample_scores")
        self.cache_dir = Path(cache_dir)
        self.features = features
        self.every_n_epochs = every_n_epochs
        self.n = {"val": n_val, "test": n_test}
        self.probes = probes
        self.n_probe_train = n_probe_train
        self.kid_subset_size = kid_subset_size
        self.feature_epochs = feature_epochs
        self.seed = seed
        self.net = None  # the FeatureNet (its classifier head gives cond_acc)
        self.metrics = None  # (FID, KID)
        self.tag = ""
        self.key = ""
        self.num_classes: int | None = None  # the data's, known at setup (None: labelled)

    @staticmethod
    def applies(pl_module: nn.Module) -> bool:
        """Images (C, H, W) and a sampler: FID / KID (and cond_acc)."""
        return len(getattr(pl_module, "data_shape", ())) == 3 and hasattr(pl_module, "sample")

    @staticmethod
    def recon_applies(pl_module: nn.Module) -> bool:
        """Images (C, H, W) and ``reconstruct``: recon_acc."""
        return len(getattr(pl_module, "data_shape", ())) == 3 and hasattr(pl_module, "reconstruct")

    @property
    def labelled(self) -> bool:
        """Whether the data has class labels (two classes at least)."""
        return self.num_classes is None or self.num_classes >= 2

    @staticmethod
    def space(features: str, num_classes: int | None) -> str:
        """The feature space that ``features`` means for data with ``num_classes`` classes
        (None: labelled): ``classifier``, ``autoencoder`` or ``inception``."""
        if features == "auto":
            return "classifier" if num_classes is None or num_classes >= 2 else "autoencoder"
        return "classifier" if features == "genlab" else features

    @property
    def suffix(self) -> str:
        """What score names carry after ``fid`` / ``kid``: the feature space."""
        from genlab.metrics.features import SUFFIX

        return SUFFIX[self.space(self.features, self.num_classes)]

    def uses_features(self, pl_module: nn.Module) -> bool:
        """Whether any score of this model needs a feature network."""
        return self.applies(pl_module) or self.recon_applies(pl_module)

    def probes_apply(self, pl_module: nn.Module) -> bool:
        """Images (C, H, W) with labels and an encoder, with ``probes`` on."""
        images = len(getattr(pl_module, "data_shape", ())) == 3
        return self.probes and images and self.labelled and hasattr(pl_module, "encode")

    def metric_names(self, pl_module: nn.Module, split: str) -> set[str]:
        """What this callback logs for ``pl_module`` on ``split``."""
        names = set()
        sfx = self.suffix
        if self.applies(pl_module) and (split == "test" or self.every_n_epochs > 0):
            names = {f"{split}/fid{sfx}", f"{split}/kid{sfx}"}
            for v in self.variants(pl_module, split):
                names |= {f"{split}/fid_{v}{sfx}", f"{split}/kid_{v}{sfx}"}
            if hasattr(pl_module, "sample_conditional") and self.labelled:
                names.add(f"{split}/cond_acc")
        labelled = self.labelled and (split == "test" or self.every_n_epochs > 0)
        if self.recon_applies(pl_module) and labelled:
            names.add(f"{split}/recon_acc")
        if split == "test" and self.probes_apply(pl_module):
            names |= {f"test/{k}" for k in PROBES}
        return names

    @staticmethod
    def variants(pl_module: nn.Module, split: str) -> dict[str, dict]:
        """The model's other samplers to score, ``{name: sample kwargs}`` (GANs: the raw
        generator next to its EMA, sampling without Langevin)."""
        fn = getattr(pl_module, "sample_variants", None)
        return fn(split) if fn is not None else {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.datamodule is not None:
            self.num_classes = int(getattr(trainer.datamodule, "num_classes", 0) or 0)
        if trainer.datamodule is not None and self.uses_features(pl_module):
            self._setup(trainer, pl_module)  # the feature net is ready before any loop runs

    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.metrics is not None:
            self.metrics = [m.to(pl_module.device) for m in self.metrics]
            if self.net is not None:
                self.net.to(pl_module.device)
            return
        from genlab.metrics.features import data_key, get_feature_net
        from genlab.metrics.scores import inception_extractor, make_fid_kid

        dm, device = trainer.datamodule, pl_module.device
        space = self.space(self.features, self.num_classes)
        if space == "classifier" and not self.labelled:
            raise ConfigError(
                f"metrics.features={self.features} needs class labels, and this data has "
                "none: use metrics.features=auto (an auto-encoder's features) or inception"
            )
        # The classifier serves cond_acc / recon_acc whenever there are labels; the
        # auto-encoder only the scores of unlabelled data.
        kinds = (["classifier"] if self.labelled else []) + (
            ["autoencoder"] if space == "autoencoder" else []
        )
        nets = {}
        for kind in kinds:
            if trainer.world_size > 1:
                # Rank 0 trains and caches a missing net on its own device while the others
                # wait; then every rank reads the cache and moves the net to its own device.
                if trainer.global_rank == 0:
                    get_feature_net(dm, self.cache_dir, self.feature_epochs, device, kind)
                trainer.strategy.barrier("genlab-feature-net")
            nets[kind] = get_feature_net(dm, self.cache_dir, self.feature_epochs, device, kind)
        self.net = nets["classifier"][0].to(device) if "classifier" in nets else None
        if space == "inception":
            extractor, self.tag = inception_extractor(), "inception"
        else:
            extractor, record = nets[space]
            self.tag = f"genlab-{record['digest']}"
        self.key = data_key(trainer.datamodule)
        self.metrics = [m.to(device) for m in make_fid_kid(extractor, self.kid_subset_size)]

    def _real(self, trainer: pl.Trainer, split: str, n: int) -> Tensor:
        from genlab.metrics.scores import real_features

        dm = trainer.datamodule
        x = dm.splits[split][0][:n]
        name = f"{self.key}_{self.tag}_{split}_seed{getattr(dm, 'split_seed', 0)}_n{x.shape[0]}.pt"
        fid = self.metrics[0]
        return real_features(fid.inception, x.to(fid.device), self.cache_dir / "stats" / name)

    @torch.no_grad()
    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict:
        """Every score that applies to this model on ``split``: {"<split>/<name>": value}."""
        was_training = pl_module.training
        pl_module.eval()
        out: dict[str, float] = {}
        if self.applies(pl_module):
            out.update(self.sample_scores(trainer, pl_module, split))
        if self.recon_applies(pl_module) and self.labelled and trainer.is_global_zero:
            out[f"{split}/recon_acc"] = self.recon_acc(trainer, pl_module, split)
        if split == "test" and self.probes_apply(pl_module) and trainer.is_global_zero:
            from genlab.metrics.scores import probe_scores

            dm = trainer.datamodule
            train = tuple(t[: self.n_probe_train] for t in dm.splits["train"][:2])
            scores = probe_scores(pl_module, train, tuple(dm.splits["test"][:2]))
            out.update({f"test/{k}": v for k, v in scores.items()})
        pl_module.train(was_training)
        return out

    def sample_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str):
        """FID / KID of samples on ``split`` (all ranks) and cond_acc (rank 0)."""
        from genlab.metrics.scores import classify, fid_kid_of, generate, set_real

        self._setup(trainer, pl_module)
        dm = trainer.datamodule
        out: dict[str, float] = {}
        real = self._real(trainer, split, self.samples(pl_module, split))
        n = real.shape[0]
        # Under DDP each rank holds every world-th real feature and draws its share of the
        # samples (its own noise); torchmetrics gathers the states in compute(), so the
        # scores are of all n real and n generated images, and every rank gets them.
        rank, world = trainer.global_rank, trainer.world_size
        set_real(*self.metrics, real[rank::world])
        fake = generate(pl_module, len(range(rank, n, world)), seed=self.seed + 7919 * rank)
        s, sfx = fid_kid_of(*self.metrics, fake, n_total=n), self.suffix
        out[f"{split}/fid{sfx}"], out[f"{split}/kid{sfx}"] = s["fid"], s["kid"]
        for name, kwargs in self.variants(pl_module, split).items():
            fake = generate(pl_module, len(fake), seed=self.seed + 7919 * rank, **kwargs)
            s = fid_kid_of(*self.metrics, fake, n_total=n)
            out[f"{split}/fid_{name}{sfx}"], out[f"{split}/kid_{name}{sfx}"] = s["fid"], s["kid"]
        if trainer.is_global_zero and self.labelled and hasattr(pl_module, "sample_conditional"):
            labels = torch.arange(n, device=pl_module.device) % dm.num_classes
            g = torch.Generator(device=pl_module.device).manual_seed(self.seed)
            imgs = pl_module.sample_conditional(labels, generator=g)
            pred = classify(self.net, imgs.float().clamp(0, 1))
            out[f"{split}/cond_acc"] = float((pred == labels).float().mean())
        return out

    def samples(self, pl_module: nn.Module, split: str) -> int:
        """How many samples (and real images) score ``split``."""
        n = self.n[split]
        return n if n is not None else getattr(pl_module, "val_score_samples", 1000)

    def recon_acc(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> float:
        """The feature network's accuracy on ``reconstruct(x)`` against the labels of x,
        for the first ``n_val`` / ``n_test`` images of ``split`` (rank 0)."""
        from genlab.metrics.scores import reconstruction_accuracy

        self._setup(trainer, pl_module)
        x, y = (t[: self.samples(pl_module, split)] for t in trainer.datamodule.splits[split][:2])
        return reconstruction_accuracy(pl_module, self.net, x, y, seed=self.seed)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (
            trainer.sanity_checking
            or trainer.datamodule is None
            or not self.uses_features(pl_module)
        ):
            return
        if self.every_n_epochs > 0 and is_due(trainer, self.every_n_epochs):
            self._log(pl_module, self.scores(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.datamodule is not None and self.metric_names(pl_module, "test"):
            self._log(pl_module, self.scores(trainer, pl_module, "test"))

    @staticmethod
    def _log(pl_module: pl.LightningModule, values: dict[str, float]) -> None:
        # FID / KID are equal on every rank (callbacks may monitor them on each); the
        # one-process scores are logged by rank 0.
        for k, v in values.items():
            shared = k.split("/")[-1].startswith(("fid", "kid"))
            pl_module.log(k, v, rank_zero_only=not shared)


class SplitCurve(pl.Callback):
    """Evaluates another split (default: test) after validation every ``every_n_epochs``
    epochs and logs ``curve/<split>_<metric>``: learning curves on the test set, as papers
    plot them. Calls the model's ``batch_metrics(batch, batch_idx, full=full)``, the
    method its validation and test steps use; ``full=True`` adds the test-time estimates
    (the IWAE bound of VAEs), which cost much more.

    One extra pass over the split per evaluation; off in the default callbacks.
    """

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "test",
        every_n_epochs: PositiveInt = 1,
        full: bool = False,
    ) -> None:
        check_args(type(self), locals(), "callbacks.split_curve")
        self.split = split
        self.every_n_epochs = every_n_epochs
        self.full = full

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not hasattr(pl_module, "batch_metrics"):
            raise ConfigError(
                f"callbacks.split_curve needs the model's batch_metrics(batch, batch_idx); "
                f"{type(pl_module).__name__} has none: remove it (callbacks.split_curve=null)"
            )

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        dm = trainer.datamodule
        if dm is None:
            return
        loader = getattr(dm, f"{self.split}_dataloader")()
        sums: dict[str, Tensor] = {}
        n = 0
        for i, batch in enumerate(loader):
            batch = [t.to(pl_module.device) for t in batch]
            b = batch[0].shape[0]
            for k, v in pl_module.batch_metrics(batch, i, full=self.full).items():
                sums[k] = sums.get(k, 0) + v * b  # on the device: one read-back at the end
            n += b
        for k, v in sums.items():
            pl_module.log(f"curve/{self.split}_{k}", v / n, sync_dist=True)
