"""Score callbacks: FID / KID of samples, conditional accuracy and latent probes
(:class:`SampleScores`, settings under ``metrics.*``), and learning curves on another
split (:class:`SplitCurve`, ``callbacks=test_curve``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from genlab.callbacks.training import is_due
from genlab.checks import NonNegativeInt, PositiveInt, Seed, check_args
from genlab.errors import ConfigError
from genlab.metrics.features import SUFFIX
from genlab.metrics.scores import distributed_rows, world_of

log = logging.getLogger(__name__)

PROBES = ("linear_probe_acc", "knn_acc", "mlp_probe_acc")  # test/<name>, see probe_scores
SCORES = ("fid", "kid", "precision", "recall", "density", "coverage")  # + the space's suffix
# Computed on every rank (equal there): logged by each, so every rank may monitor them.
SHARED = (*SCORES, "cond_acc", "feature_net")
SMOKE_PROBE_IMAGES = 1000  # codes per split the probes use under trainer.fast_dev_run


class SampleScores(pl.Callback):
    """FID / KID and precision / recall / density / coverage of samples, conditional and
    reconstruction accuracy, latent probes and HSIC (``metrics.*``).

    - ``val/fid``, ``val/kid``, ``val/precision``, ``val/recall``, ``val/density``,
      ``val/coverage``: ``n_val`` samples against ``n_val`` validation images (None: the
      model's ``val_score_samples``, else 1000; DDPM and flow matching: 250), every
      ``every_n_epochs`` epochs and after the last; ``test/...`` with ``n_test`` at test
      time. Precision / recall use k = 3 neighbours, density / coverage k = 5.
      ``test/fid_se`` (with the space's suffix): with ``fid_bootstrap`` = B >= 2, the
      FID's bootstrap standard error over B resamples of both feature sets (the spread
      another draw of as many samples and images would show; B FIDs more to compute).
    - ``{split}/fid_<variant>``, ``{split}/kid_<variant>``: the model's other samplers
      (``sample_variants(split)``; GANs: ``fid_raw``, the trained generator next to its EMA).
    - ``{split}/cond_acc``: models with ``sample_conditional(labels, generator)``: the
      classifier's accuracy on ``n`` class-conditional samples (mapped to images as for
      FID, drawn in chunks).
    - ``{split}/recon_acc``: models with ``reconstruct(x)`` (VAEs, AEs, ALI's G(E(x))...):
      the classifier's accuracy on the reconstructions of ``n_val`` / ``n_test`` images of
      the split against the labels of the originals.
    - ``{split}/feature_net_acc`` (``feature_net_mse`` for the auto-encoder): the quality
      of the genlab network these scores used, on that split; a network whose features
      can hardly tell the classes apart is flagged in one warning line.
    - ``test/linear_probe_acc``, ``test/knn_acc``, ``test/mlp_probe_acc``,
      ``test/hsic_code_label``, ``test/hsic_code_halves``: models with ``encode`` (probes
      fitted on the frozen codes of ``n_probe_train`` training images, scored on the test
      split; normalised HSIC between the codes of ``n_hsic`` test images and their labels,
      and between the two halves of the code). Models with ``probe_layers(x)`` (Deep
      InfoMax) also log each layer's probes, ``test/linear_probe_acc_<layer>`` etc.

    Feature spaces (``features``; the space is in the score's name, so numbers from
    different spaces can't be mixed up in a table): ``classifier`` (genlab's per-data-set
    CNN classifier): ``fid``, ``precision``, ...; ``autoencoder`` (the same CNN trained as
    an auto-encoder, for data without labels): ``fid_ae``, ``precision_ae``, ...;
    ``inception`` (Inception-v3 pool features as papers use, from ``inception_weights`` or
    the ``genlab[inception]`` extra): ``fid_inception``, ...; ``auto`` (default): the
    classifier when the data has labels, else the auto-encoder. Networks are built on the
    first score (never by a run that scores nothing; a fast dev run computes the probes
    only) and live here,
    frozen: never in the optimiser or the checkpoint. Real features are cached by the
    network and the exact images (:mod:`genlab.metrics.spaces`).

    Under DDP every rank draws every world-th chunk of the same seeded samples and the
    features are gathered back in order: every score is of the same images as in one
    process (the sample count is the total, not per rank).
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
        hsic: bool = True,
        n_hsic: PositiveInt = 2000,
        kid_subset_size: PositiveInt = 1000,
        fid_bootstrap: NonNegativeInt = 0,
        feature_epochs: PositiveInt = 5,
        inception_weights: str | None = None,
        seed: Seed = 0,
    ) -> None:
        check_args(type(self), locals(), "callbacks.sample_scores")
        self.cache_dir = Path(cache_dir)
        self.features = features
        self.every_n_epochs = every_n_epochs
        self.n = {"val": n_val, "test": n_test}
        self.probes = probes
        self.n_probe_train = n_probe_train
        self.hsic = hsic
        self.n_hsic = n_hsic
        self.kid_subset_size = kid_subset_size
        self.fid_bootstrap = fid_bootstrap
        self.feature_epochs = feature_epochs
        self.inception_weights = inception_weights
        self.seed = seed
        self.classifier = None  # genlab's classifier (cond_acc, recon_acc), when labelled
        self.space_ = None  # the FeatureSpace of FID / KID / PRDC
        self.num_classes: int | None = None  # the data's, known at setup (None: labelled)
        self.quality: dict = {}  # the genlab network's record (accuracy, ...)
        self._flagged = False
        self._inception = None  # the Inception network, loaded (and checked) at fit start

    @staticmethod
    def applies(pl_module: nn.Module) -> bool:
        """Images (C, H, W) and a sampler: FID / KID / PRDC (and cond_acc)."""
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
        """What score names carry after ``fid`` / ``precision`` ...: the feature space."""
        return SUFFIX[self.space(self.features, self.num_classes)]

    def uses_features(self, pl_module: nn.Module) -> bool:
        """Whether any score of this model needs a feature network."""
        return self.applies(pl_module) or (self.recon_applies(pl_module) and self.labelled)

    def probes_apply(self, pl_module: nn.Module) -> bool:
        """Images (C, H, W) with labels and an encoder, with ``probes`` on."""
        images = len(getattr(pl_module, "data_shape", ())) == 3
        return self.probes and images and self.labelled and hasattr(pl_module, "encode")

    def metric_names(self, pl_module: nn.Module, split: str) -> set[str]:
        """What this callback logs for ``pl_module`` on ``split``."""
        names = set()
        sfx = self.suffix
        scored = split == "test" or self.every_n_epochs > 0
        if self.applies(pl_module) and scored:
            names = {f"{split}/{k}{sfx}" for k in SCORES}
            for v in self.variants(pl_module, split):
                names |= {f"{split}/fid_{v}{sfx}", f"{split}/kid_{v}{sfx}"}
            if hasattr(pl_module, "sample_conditional") and self.labelled:
                names.add(f"{split}/cond_acc")
        if self.recon_applies(pl_module) and self.labelled and scored:
            names.add(f"{split}/recon_acc")
        genlab_net = self.labelled or self.space(self.features, self.num_classes) != "inception"
        if names and genlab_net:
            names.add(f"{split}/{self.quality_name(pl_module)}")
        if split == "test" and self.probes_apply(pl_module):
            names |= {f"test/{k}" for k in PROBES}
            for layer in getattr(pl_module, "probe_layer_names", ()):
                names |= {f"test/{k}_{layer}" for k in PROBES}
            if self.hsic:
                names |= {"test/hsic_code_label", "test/hsic_code_halves"}
        return names

    def quality_name(self, pl_module: nn.Module) -> str:
        """The logged quality of the genlab network the scores use."""
        ae = self.space(self.features, self.num_classes) == "autoencoder"
        return "feature_net_mse" if ae else "feature_net_acc"

    @staticmethod
    def variants(pl_module: nn.Module, split: str) -> dict[str, dict]:
        """The model's other samplers to score, ``{name: sample kwargs}`` (GANs: the raw
        generator next to its EMA, sampling without Langevin)."""
        fn = getattr(pl_module, "sample_variants", None)
        return fn(split) if fn is not None else {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.datamodule is not None:
            self.num_classes = int(getattr(trainer.datamodule, "num_classes", 0) or 0)

    @staticmethod
    def smoke(trainer: pl.Trainer) -> bool:
        """A fast dev run: no score that needs a feature network (the probes still run, on
        ``SMOKE_PROBE_IMAGES`` codes)."""
        return bool(getattr(trainer, "fast_dev_run", False))

    # ---- feature networks -------------------------------------------------------------
    def _setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build (or load) the feature networks on first use, on the module's device."""
        device = pl_module.device
        if self.space_ is not None:
            self.space_.to(device)
            if self.classifier is not None:
                self.classifier.to(device)
            return
        from genlab.metrics.spaces import genlab_space, inception_space

        dm = trainer.datamodule
        space = self.space(self.features, self.num_classes)
        if space == "classifier" and not self.labelled:
            raise ConfigError(
                f"metrics.features={self.features} needs class labels, and this data has "
                "none: use metrics.features=auto (an auto-encoder's features) or inception"
            )
        # The classifier serves cond_acc / recon_acc whenever there are labels; the
        # auto-encoder the scores of unlabelled data in its own space.
        kinds = ["classifier"] if self.labelled else ["autoencoder"] * (space == "autoencoder")
        spaces = {}
        for kind in kinds:
            world = getattr(trainer, "world_size", 1)
            if world > 1:
                # Rank 0 trains and caches a missing net on its own device while the others
                # wait; then every rank reads the cache and moves the net to its own device.
                if trainer.global_rank == 0:
                    genlab_space(kind, dm, self.cache_dir, self.feature_epochs, device)
                trainer.strategy.barrier("genlab-feature-net")
            spaces[kind] = genlab_space(kind, dm, self.cache_dir, self.feature_epochs, device)
        if "classifier" in spaces:
            self.classifier = spaces["classifier"].net.to(device)
        if space == "inception":
            batch = 200 if device.type == "cuda" else 50
            self.space_ = inception_space(self.inception_weights, batch, self._inception)
            self.quality = spaces[kinds[0]].record if kinds else {}
        else:
            self.space_ = spaces[space]
            self.quality = self.space_.record
        self.space_.to(device)
        self._flag(pl_module)

    def _flag(self, pl_module) -> None:
        from genlab.metrics.features import quality_problem

        if not self.quality:  # Inception scores of unlabelled data: no genlab network
            return
        problem = quality_problem(self.quality, self.num_classes or 10)
        if problem and not self._flagged:
            log.warning(
                f"{problem}; the scores that use it say little: train it longer "
                "(callbacks.sample_scores.feature_epochs) or use metrics.features=inception"
            )
            self._flagged = True

    def _quality(self, pl_module: nn.Module, split: str) -> dict[str, float]:
        name = self.quality_name(pl_module)
        value = self.quality.get(f"{split}_acc" if name.endswith("acc") else f"{split}_mse")
        return {f"{split}/{name}": float(value)} if value is not None else {}

    # ---- scores -----------------------------------------------------------------------
    def _real(self, trainer: pl.Trainer, split: str, n: int) -> Tensor:
        """Features (n, d) of the first n images of ``split``, cached by network and images."""
        from genlab.metrics.features import data_key
        from genlab.metrics.spaces import load_real, real_cache_path, real_key, save_real
        from genlab.progress import Progress

        dm = trainer.datamodule
        x = dm.splits[split][0][:n]
        key = real_key(self.space_, x)
        path = real_cache_path(self.cache_dir, data_key(dm), split, key)
        feats = load_real(path, key)
        found = feats is not None
        if getattr(trainer, "world_size", 1) > 1:  # all ranks read it, or all compute it
            found = trainer.strategy.reduce_boolean_decision(found, all=True)
        if not found:
            _, world = world_of(trainer)
            what = f"{self.space_.name} features of {x.shape[0]:,} real {split} images"
            with Progress(what, x.shape[0], "images") as p:
                feats = distributed_rows(
                    trainer, x.shape[0], lambda k, a, b: self.space_.features(x[a:b], p, world)
                )
            if trainer.is_global_zero:
                save_real(path, key, feats)
        return feats.to(self.space_.device)

    def _fake(self, trainer, pl_module, n: int, **kwargs) -> Tensor:
        """Features (n, d) of n samples (``sample(**kwargs)``), seeded by chunk."""
        from genlab.metrics.scores import chunk_generator, to_images
        from genlab.progress import Progress

        dev, (_, world) = pl_module.device, world_of(trainer)
        what = f"Samples for the {self.space_.name} scores"
        with Progress(what, n, "images") as p:

            def work(k: int, a: int, b: int) -> Tensor:
                g = chunk_generator(dev, self.seed, k)
                imgs = to_images(pl_module, pl_module.sample(b - a, generator=g, **kwargs))
                return self.space_.features(imgs, p, world)

            return distributed_rows(trainer, n, work)

    @torch.no_grad()
    def scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> dict:
        """Every score that applies to this model on ``split``: {"<split>/<name>": value}."""
        was_training = pl_module.training
        pl_module.eval()
        out: dict[str, float] = {}
        features = self.uses_features(pl_module) and not self.smoke(trainer)
        if features:
            self._setup(trainer, pl_module)
        if features and self.applies(pl_module):
            out.update(self.sample_scores(trainer, pl_module, split))
        if features and self.recon_applies(pl_module) and self.labelled and trainer.is_global_zero:
            out[f"{split}/recon_acc"] = self.recon_acc(trainer, pl_module, split)
        if out:
            out.update(self._quality(pl_module, split))
        if split == "test" and self.probes_apply(pl_module) and trainer.is_global_zero:
            out.update(self.probe_scores(trainer, pl_module))
        pl_module.train(was_training)
        return out

    def sample_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str):
        """FID / KID / PRDC of samples (every sampler variant) and cond_acc on ``split``."""
        from genlab.metrics.sample_quality import sample_scores, warn_non_finite

        self._setup(trainer, pl_module)
        out: dict[str, float] = {}
        real = self._real(trainer, split, self.samples(pl_module, split))
        n, sfx = real.shape[0], self.space_.suffix
        fake = self._fake(trainer, pl_module, n)
        warn_non_finite(type(pl_module).__name__, fake, split)
        s = sample_scores(
            real, fake, kid_subset_size=self.kid_subset_size, seed=self.seed,
            fid_resamples=self.fid_bootstrap if split == "test" else 0,
        )  # fmt: skip
        out.update({f"{split}/{k}{sfx}": s[k] for k in SCORES})
        if "fid_se" in s:  # the table prints it as the FID's ± (the bootstrap over both sets)
            out[f"{split}/fid{sfx}_se"] = s["fid_se"]
        for name, kwargs in self.variants(pl_module, split).items():
            fake = self._fake(trainer, pl_module, n, **kwargs)
            warn_non_finite(type(pl_module).__name__, fake, split, f" ({name})")
            s = sample_scores(real, fake, kid_subset_size=self.kid_subset_size, seed=self.seed)
            out[f"{split}/fid_{name}{sfx}"], out[f"{split}/kid_{name}{sfx}"] = s["fid"], s["kid"]
        if self.labelled and hasattr(pl_module, "sample_conditional"):
            out[f"{split}/cond_acc"] = self.cond_acc(trainer, pl_module, n)
        return out

    def cond_acc(self, trainer: pl.Trainer, pl_module: pl.LightningModule, n: int) -> float:
        """The classifier's accuracy on n class-conditional samples (labels 0, 1, ..., in
        turn), drawn in seeded chunks split over the ranks."""
        from genlab.metrics.scores import conditional_hits

        dev, classes = pl_module.device, trainer.datamodule.num_classes

        def work(k: int, a: int, b: int) -> Tensor:
            labels = torch.arange(a, b, device=dev) % classes
            hits = conditional_hits(pl_module, self.classifier, labels, self.seed * 7919 + k)
            return hits.reshape(1, 1).float()

        hits = distributed_rows(trainer, n, work)  # (chunks, 1)
        return float(hits.sum()) / n

    def samples(self, pl_module: nn.Module, split: str) -> int:
        """How many samples (and real images) score ``split``."""
        n = self.n[split]
        return n if n is not None else getattr(pl_module, "val_score_samples", 1000)

    def recon_acc(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> float:
        """The classifier's accuracy on ``reconstruct(x)`` against the labels of x, for
        the first ``n_val`` / ``n_test`` images of ``split`` (rank 0)."""
        from genlab.metrics.scores import reconstruction_accuracy

        self._setup(trainer, pl_module)
        x, y = (t[: self.samples(pl_module, split)] for t in trainer.datamodule.splits[split][:2])
        return reconstruction_accuracy(pl_module, self.classifier, x, y, seed=self.seed)

    def probe_scores(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict:
        """Linear / k-NN / MLP probes and HSIC of the codes (rank 0)."""
        from genlab.metrics.dependence import hsic
        from genlab.metrics.scores import encode_all, probe_scores

        dm = trainer.datamodule
        # A fast dev run probes 1,000 codes each way: the code path, not the number (a
        # flow encodes 20,000 images in minutes on a CPU).
        cap = SMOKE_PROBE_IMAGES if self.smoke(trainer) else None
        train = tuple(
            t[: min(self.n_probe_train, cap or self.n_probe_train)] for t in dm.splits["train"][:2]
        )
        test = tuple(t[:cap] for t in dm.splits["test"][:2])
        out = {f"test/{k}": v for k, v in probe_scores(pl_module, train, test).items()}
        if self.hsic:
            n = min(self.n_hsic, cap or self.n_hsic)
            x, y = (t[:n].to(pl_module.device) for t in dm.splits["test"][:2])
            z = encode_all(pl_module, x)  # (n, d)
            out["test/hsic_code_label"] = hsic(z, y)
            h = z.shape[1] // 2
            out["test/hsic_code_halves"] = hsic(z[:, :h], z[:, h:]) if h else float("nan")
        return out

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A weight file that is not the Inception network stops the run here, in one
        line, not at the first scoring after an epoch of training."""
        inception = self.space(self.features, self.num_classes) == "inception"
        scored = self.applies(pl_module) and not self.smoke(trainer)
        if inception and scored and self.space_ is None and self._inception is None:
            from genlab.metrics.inception import InceptionFeatures

            self._inception = InceptionFeatures(self.inception_weights)  # kept for _setup

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.datamodule is None or self.smoke(trainer):
            return
        if not self.uses_features(pl_module):
            return
        if self.every_n_epochs > 0 and is_due(trainer, self.every_n_epochs):
            self._log(pl_module, self.scores(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.datamodule is not None and self.metric_names(pl_module, "test"):
            self._log(pl_module, self.scores(trainer, pl_module, "test"))

    @staticmethod
    def _log(pl_module: pl.LightningModule, values: dict[str, float]) -> None:
        # The sample scores are equal on every rank (callbacks may monitor them on each);
        # the one-process scores are logged by rank 0.
        for k, v in values.items():
            shared = k.split("/")[-1].startswith(SHARED)
            pl_module.log(k, v, rank_zero_only=not shared)
