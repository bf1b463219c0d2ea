"""Sampling cost and quality of a sampler (DDPM, flow matching per sampler and step count;
any other family's own sampler): seconds per 1,000 images, net evaluations, and FID / KID /
precision / recall in genlab's feature space against the test split.

    python scripts/sampling_cost.py <run>/checkpoints/last.ckpt ddim:10 ddim:50 ancestral:1000
    python scripts/sampling_cost.py <ckpt> euler:10 heun:25 dopri5 --fid-n 1000 --out cost.json
    python scripts/sampling_cost.py <pixelcnn run>/checkpoints/best.ckpt default --time-n 100

Each setting is ``<sampler>[:<steps>]`` (DDPM: ddim, ancestral; flow matching: euler,
heun, dopri5) or ``default`` (the family's ``sample(n)`` as it is). Time: ``--time-n``
images in one batch, after one warm-up batch, scaled to 1,000 images (the cost is linear
in the number of images at these batch sizes). FID / KID: ``--fid-n`` samples (0: timing
only) against as many test images. The run's data config (next to the checkpoint) names
the data set; features are genlab's cached per-data-set network (``GENLAB_CACHE`` or
``<data_dir>/feature_nets``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from genlab.checks import import_target
from genlab.errors import ConfigError, run_script
from genlab.evaluate import load_run_config
from genlab.metrics.sample_quality import sample_scores
from genlab.metrics.scores import generate
from genlab.metrics.spaces import genlab_space, load_real, real_cache_path, real_key, save_real
from genlab.train import build


class _Counter:
    n = 0

    def __call__(self, *args: object) -> None:
        self.n += 1


def _kwargs(model, setting: str) -> dict:
    if setting == "default":
        return {}
    name, _, steps = setting.partition(":")
    key = "sampler" if hasattr(model.hparams, "timesteps") else "solver"
    out = {key: name}
    if steps:
        out["steps"] = int(steps)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ckpt", type=Path)
    p.add_argument("settings", nargs="+")
    p.add_argument("--time-n", type=int, default=100)
    p.add_argument("--fid-n", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(0)
    if not args.ckpt.is_file():
        raise ConfigError(f"{args.ckpt} is not a checkpoint file (<run>/checkpoints/best.ckpt)")
    cfg = load_run_config(args.ckpt, [])  # one line when the checkpoint is not in a run
    cls = import_target(cfg.model._target_)
    model = cls.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    rows = []
    real = space = None
    if args.fid_n:
        dm = build(cfg.data, "data")
        dm.setup("test")
        cache = os.environ.get("GENLAB_CACHE") or str(Path(cfg.paths.data_dir) / "feature_nets")
        space = genlab_space("classifier", dm, cache, 5)
        x = dm.splits["test"][0][: args.fid_n]
        key = real_key(space, x)
        path = real_cache_path(cache, type(dm).__name__.lower(), "test", key)
        real = load_real(path, key)
        if real is None:
            real = space.features(x)
            save_real(path, key, real)
    counter = _Counter()
    # Net evaluations (a batched call counts once): the denoiser, a PixelCNN, a VQ-VAE's
    # prior; MADE samples from its weights without calling its forward (none counted).
    nets = [getattr(model, n) for n in ("denoiser", "pixelcnn", "prior") if hasattr(model, n)]
    if hasattr(model, "denoiser") and getattr(model, "use_ema", False):
        nets.append(model.ema["denoiser"])
    for net in nets:
        net.register_forward_hook(counter)
    for setting in args.settings:
        kw = _kwargs(model, setting)
        model.sample(2, torch.Generator().manual_seed(1), **kw)  # warm-up
        counter.n = 0
        t0 = time.perf_counter()
        model.sample(args.time_n, torch.Generator().manual_seed(0), **kw)
        seconds = time.perf_counter() - t0
        row = {
            "setting": setting,
            "net_evals": counter.n if nets else None,
            "s_per_1000": seconds * 1000 / args.time_n,
        }
        if real is not None:
            fake = generate(model, args.fid_n, seed=0, batch_size=args.batch_size, **kw)
            s = sample_scores(real, space.features(fake))
            row.update(fid=s["fid"], kid=s["kid"], precision=s["precision"], recall=s["recall"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"ckpt": str(args.ckpt), "threads": torch.get_num_threads(), "time_n": args.time_n,
            "fid_n": args.fid_n, "rows": rows}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    run_script(main, "sampling_cost.py")
