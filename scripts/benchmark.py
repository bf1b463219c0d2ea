"""Training throughput: the genlab runner vs a hand-written PyTorch loop, same model and data.

    python scripts/benchmark.py                 # VAE (MLP) and NICE on MNIST, current device
    python scripts/benchmark.py --steps 400 --repeats 3 --out experiments/benchmarks/vae.json

Both sides train the same network (genlab's VAE modules, same init seed) on the same
in-memory MNIST tensors with the same batch size and optimiser; the runner goes through
`genlab.train.train(cfg)` with its default callbacks (checkpointing, image grids,
divergence guard, progress bar) and the CSV logger. Validation is off on both sides:
this measures training images/s, timed after `--warmup` steps, median over repeats.
The hand loop's loss is the family's objective: recon + beta KL (VAE), -log p(x) (flows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("WANDB_MODE", "disabled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last training step.

    Epoch-end work (checkpoint writing, validation) is not per-step cost and is left out.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.t0 = self.t1 = 0.0
        self.images = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()
        if batch_idx >= self.warmup:
            self.images += batch[0].shape[0]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            _sync(pl_module.device)
            self.t1 = time.perf_counter()

    @property
    def rate(self) -> float:
        return self.images / (self.t1 - self.t0)


def compose_cfg(overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(out)
    return cfg


def runner(overrides: list[str], steps: int, warmup: int) -> float:
    from genlab.train import train

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(
            [
                *overrides,
                "logger=csv",
                "test=false",
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={steps + warmup}",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "trainer.enable_model_summary=false",
            ],
            Path(out),
        )
        timer = StepTimer(warmup)
        with open_dict(cfg):
            cfg.callbacks["timer"] = {"_target_": f"{__name__}.StepTimer", "warmup": warmup}
        _, objs = train(cfg)
        timer = next(c for c in objs["trainer"].callbacks if isinstance(c, StepTimer))
        return timer.rate


def _build(overrides: list[str]):
    """Data module (set up, on the CPU) and a freshly seeded model, as the runner builds them."""
    from genlab._lightning import undo_nvml_cuda_check
    from genlab.train import build, build_model

    cfg = compose_cfg(overrides, Path(tempfile.gettempdir()))
    undo_nvml_cuda_check()  # the same process-wide setting as the runner
    pl.seed_everything(cfg.seed, verbose=False)
    dm = build(cfg.data, "data")
    model = build_model(cfg.model, dm.data_shape, dm.num_classes)
    return cfg, dm, model


def hand_loop(overrides: list[str], steps: int, warmup: int) -> float:
    """The same VAE trained by a plain PyTorch loop on the same in-memory tensors."""
    cfg, dm, model = _build(overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dm.setup()
    x_all = dm.splits["train"][0].to(device)  # uint8 (N, C, H, W)
    model = model.to(device).train()
    opt = model.configure_optimizers()
    bs, n = cfg.data.batch_size, x_all.shape[0]
    perm = torch.randperm(n, device=device)
    t0, images = 0.0, 0
    for i in range(steps + warmup):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        j = perm[(i * bs) % n : (i * bs) % n + bs]
        x = model.preprocess(x_all[j])  # binarisation / dequantisation, on the device
        if hasattr(model, "elbo"):  # VAE: recon + beta KL
            t = model.elbo(x)
            loss = (t["recon"] + model.hparams.beta * t["kl"]).mean()
        else:  # flows: -log p(x)
            loss = -model.log_prob(x).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            images += x.shape[0]
    _sync(device)
    return images / (time.perf_counter() - t0)


def bare_lightning(overrides: list[str], steps: int, warmup: int) -> float:
    """The same model in a bare Lightning Trainer: no logger, callbacks, checkpoints or bar.

    Separates Lightning's own per-step cost from what genlab adds on top of it.
    """
    _, dm, model = _build(overrides)
    timer = StepTimer(warmup)
    trainer = pl.Trainer(
        accelerator="auto",
        devices=1,
        max_epochs=1,
        limit_train_batches=steps + warmup,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(model, datamodule=dm)
    return timer.rate


def calls_per_step(fn, overrides: list[str], short: int = 10, long: int = 40) -> float:
    """Python function calls per training step of ``fn`` (runner or bare Lightning):
    the difference between runs of ``long`` and ``short`` steps, under cProfile. Unlike
    images/s it does not depend on what else the machine is doing."""
    import cProfile
    import pstats

    def total(steps: int) -> int:
        profile = cProfile.Profile()
        profile.enable()
        fn(overrides, steps, 0)
        profile.disable()
        return pstats.Stats(profile).total_calls

    return round((total(long) - total(short)) / (long - short), 1)


# name -> (overrides, batch size). The tiny case is almost all loop overhead: its
# per-step time difference is the runner's fixed cost per step on this machine.
CASES = {
    "vae_mlp_mnist": ["model=vae", "model/net=mlp", "data=mnist", "data.batch_size=128"],
    # NICE as in the paper (4 couplings of 5 x 1000 ReLU units), the paper's batch of 200
    "nice_mnist": ["model=nice", "data=mnist", "data.batch_size=200"],
    "vae_tiny_digits": [
        "model=vae",
        "model.net.hidden_sizes=[8]",
        "model.latent_dim=2",
        "data=digits",
        "data.batch_size=16",
        "trainer.max_epochs=1",
    ],
}


def measure(overrides: list[str], steps: int, warmup: int, repeats: int) -> dict:
    """Hand loop, bare Lightning and the runner, in rotating order (this VM's speed drifts
    by tens of percent over seconds); ratios are medians over rounds of adjacent runs."""
    fns = {"hand": hand_loop, "lightning": bare_lightning, "runner": runner}
    rates: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(repeats):
        order = list(fns)[i % 3 :] + list(fns)[: i % 3]
        for k in order:
            rates[k].append(fns[k](overrides, steps, warmup))

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        r = [y / x for x, y in zip(rates[a], rates[b], strict=True)]
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        return round(statistics.median(r), 3), [round(q[0], 3), round(q[2], 3)]

    bs = next(int(o.split("=")[1]) for o in overrides if o.startswith("data.batch_size="))
    med = {k: statistics.median(v) for k, v in rates.items()}
    r_hand, iqr = ratio("hand", "runner")
    return {
        "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": bs,
        "steps_per_measurement": steps,
        "repeats": repeats,
        "hand_images_per_s": round(med["hand"], 1),
        "lightning_images_per_s": round(med["lightning"], 1),
        "runner_images_per_s": round(med["runner"], 1),
        "ratio": r_hand,  # runner / hand, the headline
        "ratio_iqr": iqr,
        "lightning_vs_hand": ratio("hand", "lightning")[0],
        "runner_vs_lightning": ratio("lightning", "runner")[0],
        "runner_overhead_us_per_step": round(1e6 * bs * (1 / med["runner"] - 1 / med["hand"]), 1),
        # deterministic: Python calls per step (the hand loop's are a few dozen)
        "runner_calls_per_step": calls_per_step(runner, overrides),
        "lightning_calls_per_step": calls_per_step(bare_lightning, overrides),
        "all_images_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--steps", type=int, default=150, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--repeats", type=int, default=12, help="hand/runner pairs (ABBA order)")
    ap.add_argument("--data-dir", default=os.environ.get("GENLAB_DATA", "data"))
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results = {}
    for name in args.cases:
        overrides = [*CASES[name], f"paths.data_dir={args.data_dir}"]
        if "data=digits" not in overrides:
            overrides.append("data.download=false")
        steps = min(args.steps, 80) if "digits" in name else args.steps  # one digits epoch
        if name == "nice_mnist":  # ~50x the VAE's compute per image: fewer, longer steps
            steps = max(10, args.steps // 4)
        results[name] = measure(overrides, steps, min(args.warmup, 10), args.repeats)
    print(
        f"\n{'case':<16} {'device':<6} {'thr':>3} {'hand':>7} {'bare PL':>8} {'runner':>7}"
        f" {'runner/hand':>11} {'IQR':>14} {'PL/hand':>8} {'runner/PL':>9} {'calls/step':>15}"
        "  (images/s; Python calls per step: bare PL, runner)"
    )
    for name, v in results.items():
        print(
            f"{name:<16} {v['device'][:6]:<6} {v['torch_threads']:>3} "
            f"{v['hand_images_per_s']:>7.0f} {v['lightning_images_per_s']:>8.0f} "
            f"{v['runner_images_per_s']:>7.0f} {v['ratio']:>11.3f} {str(v['ratio_iqr']):>14} "
            f"{v['lightning_vs_hand']:>8.3f} {v['runner_vs_lightning']:>9.3f} "
            f"{v['lightning_calls_per_step']:>7.0f} {v['runner_calls_per_step']:>7.0f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
