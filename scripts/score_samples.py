"""Sample scores of finished runs in one or more feature spaces, at one sample count.

    python scripts/score_samples.py RUN_DIR [RUN_DIR ...] --features inception classifier \\
        --n 2000 --out experiments/inception_scores

Each RUN_DIR is a genlab run folder (``checkpoints/best.ckpt``, else ``last.ckpt``, and
``.hydra/config.yaml``; ``--ckpt last`` takes ``last.ckpt``). The checkpoint is loaded
without Hydra, its data set built from the run's config, and the ``sample_scores``
callback's own code scores ``--n`` samples against the first ``--n`` test images in each
space: FID, KID, precision / recall / density / coverage, and cond_acc / recon_acc where
they apply (the sampler variants such as the GANs' raw generator only with ``--variants``).
The samples are drawn once, in seeded chunks, and scored in every space. Each FID comes
with its bootstrap standard error (``test/fid*_se``, ``--fid-bootstrap`` resamples of
both feature sets; 20 by default, 0 for none).
Writes ``metrics_<name>.csv`` (one row of ``test/...`` values, as a run's CSV log has
them) and ``config_<name>.yaml`` (the run's config) per run into ``--out``, so
``genlab-report --out ...`` tables them with every feature space in its own columns, and
``scores_<name>.json`` with the checkpoint scored, its SHA-256 (first 12 hex digits,
as the reproducibility table cites it) and the seconds each space took. ``<name>`` is the
run folder's name unless ``--names`` gives one per run.

``--parzen`` adds the Parzen-window log-likelihood of Goodfellow et al. (2014), the
protocol of the GAN and AAE papers' MNIST tables: ``--n`` samples, the bandwidth chosen on
the first 1,000 validation images, the mean over the first ``--n`` test images (nats per
image, pixels in [0, 1]) as ``test/parzen_loglik`` with ``test/parzen_loglik_se`` and
``test/parzen_sigma``. It is a weak estimator in 784 dimensions (Theis et al. 2016):
use it only to stand beside those papers' numbers.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from genlab.callbacks import SampleScores
from genlab.checks import import_target
from genlab.errors import ConfigError, GenlabError
from genlab.evaluate import load_run_config
from genlab.report.reproduction import file_digest
from genlab.train import build


def parzen_scores(model, dm, n: int, seed: int = 0) -> dict[str, float]:
    """Parzen-window log-likelihood of the first ``n`` test images under ``n`` samples,
    the bandwidth chosen on the first 1,000 validation images."""
    from genlab.data.transforms import to_unit
    from genlab.metrics import parzen_log_likelihood, parzen_sigma
    from genlab.metrics.scores import generate

    if "val" not in dm.splits:
        raise SystemExit(
            f"--parzen chooses its bandwidth on validation images: {type(dm).__name__} has none"
        )
    samples = generate(model, n, seed=seed).flatten(1)  # (n, D) in [0, 1]
    sigma = parzen_sigma(samples, to_unit(dm.splits["val"][0][:1000]).flatten(1))
    ll = parzen_log_likelihood(samples, to_unit(dm.splits["test"][0][:n]).flatten(1), sigma)
    return {
        "test/parzen_loglik": float(ll.mean()),
        "test/parzen_loglik_se": float(ll.std() / ll.numel() ** 0.5),
        "test/parzen_sigma": sigma,
    }


def reuse_samples(model) -> None:
    """Make ``model.sample`` draw each seeded chunk once for all feature spaces.

    Every space draws the same chunks (one generator per chunk, seeded from the chunk's
    index), so the second space would repeat the first one's sampling: for a
    pixel-by-pixel sampler (a PixelCNN: about 0.5 s per MNIST image on 2 cores) that
    doubled the cost. The memo is keyed on the generator's state, the count and the
    sampler's arguments; a call without a generator is not memoised.
    """
    draw, memo = model.sample, {}

    def sample(n: int, generator: torch.Generator | None = None, **kwargs):
        if generator is None:
            return draw(n, **kwargs)
        state = hashlib.sha1(generator.get_state().cpu().numpy().tobytes()).hexdigest()
        key = (n, str(generator.device), state, repr(sorted(kwargs.items())))
        if key not in memo:
            memo[key] = draw(n, generator=generator, **kwargs)
        return memo[key].clone()  # a consumer may change its copy in place

    model.sample = sample


def score_run(
    ckpt: Path,
    spaces: list[str],
    n: int,
    cache_dir: str,
    variants: bool,
    seed: int = 0,
    parzen: bool = False,
    fid_bootstrap: int = 0,
) -> tuple[dict[str, float], dict[str, float], object]:
    """({test/<score>: value}, {space: seconds}, the run's config) of one checkpoint."""
    cfg = load_run_config(ckpt, [])
    dm = build(cfg.data, "data")
    dm.setup()
    cls = import_target(cfg.model._target_)
    model = cls.load_from_checkpoint(ckpt, map_location="cpu").eval()
    reuse_samples(model)
    trainer = SimpleNamespace(
        datamodule=dm, is_global_zero=True, global_rank=0, world_size=1, fast_dev_run=False
    )
    values: dict[str, float] = {}
    seconds: dict[str, float] = {}
    for space in spaces:
        cb = SampleScores(
            cache_dir=cache_dir, features=space, n_test=n, probes=False, seed=seed,
            fid_bootstrap=fid_bootstrap,
        )  # fmt: skip
        cb.num_classes = int(getattr(dm, "num_classes", 0) or 0)
        if not variants:
            cb.variants = lambda module, split: {}  # noqa: E731 - the main sampler only
        t0 = time.perf_counter()
        with torch.no_grad():
            values.update(cb.scores(trainer, model, "test"))
        seconds[space] = round(time.perf_counter() - t0, 1)
    if parzen:
        t0 = time.perf_counter()
        with torch.no_grad():
            values.update(parzen_scores(model, dm, n, seed))
        seconds["parzen"] = round(time.perf_counter() - t0, 1)
    return values, seconds, cfg


def checkpoint_of(run: Path, which: str) -> Path:
    """``<run>/checkpoints/<which>.ckpt`` (else last.ckpt); one line when ``run`` is not a
    genlab run folder with a checkpoint."""
    if not (run / ".hydra" / "config.yaml").is_file():
        raise ConfigError(f"{run} is not a genlab run folder (no .hydra/config.yaml)")
    for name in (which, "last"):
        if (run / "checkpoints" / f"{name}.ckpt").is_file():
            return run / "checkpoints" / f"{name}.ckpt"
    raise ConfigError(f"{run} has no checkpoints/{which}.ckpt or checkpoints/last.ckpt")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument(
        "--features",
        nargs="*",
        default=["inception", "classifier"],
        choices=["inception", "classifier", "autoencoder", "auto"],
    )
    p.add_argument("--parzen", action="store_true", help="also the Parzen-window log-lik.")
    p.add_argument("--n", type=int, default=2000, help="samples and test images")
    p.add_argument("--ckpt", default="best", choices=["best", "last"])
    p.add_argument("--names", nargs="*", help="one output name per run")
    p.add_argument("--variants", action="store_true", help="also score sampler variants")
    p.add_argument(
        "--fid-bootstrap", type=int, default=20,
        help="resamples for the FID's bootstrap standard error, test/fid*_se (0: none)",
    )  # fmt: skip
    p.add_argument("--cache-dir", default=None, help="default: $GENLAB_CACHE or the run's")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    names = args.names or [r.name for r in args.runs]
    if len(names) != len(args.runs):
        p.error("--names needs one name per run")
    if args.n < 1:
        p.error(f"--n must be a positive number of samples, got {args.n}")
    try:
        ckpts = [checkpoint_of(run, args.ckpt) for run in args.runs]  # all, before any work
        args.out.mkdir(parents=True, exist_ok=True)
        for run, name, ckpt in zip(args.runs, names, ckpts, strict=True):
            score_and_save(run, name, ckpt, args)
    except GenlabError as e:
        print(f"genlab: {e.label}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def score_and_save(run: Path, name: str, ckpt: Path, args: argparse.Namespace) -> None:
    """Score one run's checkpoint; write metrics_<name>.csv, config_<name>.yaml and
    scores_<name>.json into ``args.out``."""
    cache = args.cache_dir or str(
        OmegaConf.select(OmegaConf.load(run / ".hydra" / "config.yaml"), "metrics.cache_dir")
    )
    values, seconds, cfg = score_run(
        ckpt, args.features, args.n, cache, args.variants, parzen=args.parzen,
        fid_bootstrap=args.fid_bootstrap,
    )  # fmt: skip
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    row = {"epoch": saved.get("epoch", ""), "step": saved.get("global_step", ""), **values}
    with open(args.out / f"metrics_{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    OmegaConf.save(cfg, args.out / f"config_{name}.yaml")
    info = {
        "checkpoint": str(ckpt),
        "sha256": file_digest(ckpt),  # a table row cites the weights it scored by this
        "n": args.n,
        "fid_bootstrap": args.fid_bootstrap,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "scores": values,
    }
    (args.out / f"scores_{name}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({"run": name, **seconds, **values}), flush=True)


if __name__ == "__main__":
    main()
