"""Training throughput: the genlab runner vs a hand-written PyTorch loop, same model and data.

    python scripts/benchmark.py                                   # every case, eager and compiled
    python scripts/benchmark.py --cases vae_tiny_digits --variants eager inner4 compiled_inner4
    python scripts/benchmark.py --scaling 64 128 256 512 1024     # + images/s vs batch size
    python scripts/benchmark.py --profile                         # + where a tiny step's time goes

Both sides train the same network (same init seed) on the same in-memory data with the
same batch size and optimiser(s); the runner goes through `genlab.train.train(cfg)` with
its default callbacks (checkpointing, image grids, divergence guard, progress bar) and
the CSV logger, a bare Lightning Trainer (eager variants) shows Lightning's own share.
Validation is off: this measures training images/s, timed after `--warmup` steps (which
also absorb compilation), medians over rounds in rotating order. The hand loop's step is
the family's objective written out: recon + beta KL (VAE), -log p(x) (flows), a critic
step then a generator step with the EMA update (GANs). Variants: `compiled` compiles the
family's networks on both sides (`compile=true`), `bf16` runs under bf16 autocast
(`trainer.precision=bf16-mixed`), `inner4` gives the runner 4 optimizer steps per
Lightning step (`inner_steps=4`). Peak memory: max allocated on a GPU, peak RSS on the
CPU (reset per measurement on Linux). The hand loop's optimizer is torch's default
implementation (`--hand-optimizer torch`, what `torch.optim.Adam(params)` gives a plain
loop) or genlab's fused one (`--hand-optimizer genlab`: the same updates as the runner,
so the ratio is the runner's per-step overhead alone).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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
        return self.images / (self.t1 - self.t0) if self.t1 > self.t0 else 0.0


def compose_cfg(overrides: list[str], out: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(out)
    return cfg


@dataclass(frozen=True)
class Variant:
    """How both sides run: compiled networks, mixed precision, optimizer steps per
    Lightning step (the runner; the hand loop has no per-step overhead to save)."""

    compile: bool = False
    precision: str = "32"
    inner_steps: int = 1

    @property
    def name(self) -> str:
        parts = ["compiled" if self.compile else "eager"]
        if self.precision != "32":
            parts.append(self.precision)
        if self.inner_steps > 1:
            parts.append(f"inner{self.inner_steps}")
        return "_".join(parts)


VARIANTS = {
    "eager": Variant(),
    "compiled": Variant(compile=True),
    "bf16": Variant(precision="bf16-mixed"),
    "compiled_bf16": Variant(compile=True, precision="bf16-mixed"),
    "inner4": Variant(inner_steps=4),
    "compiled_inner4": Variant(compile=True, inner_steps=4),
    "inner16": Variant(inner_steps=16),
    "compiled_inner16": Variant(compile=True, inner_steps=16),
}


def reset_peak_memory(device: torch.device) -> None:
    """Start a new high-water mark: the GPU's allocator, else this process's RSS (Linux:
    writing 5 to /proc/self/clear_refs resets VmHWM)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # not Linux: ru_maxrss is the process's peak so far
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Max allocated GPU memory, else the peak RSS, since ``reset_peak_memory`` (MiB)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def runner(overrides: list[str], steps: int, warmup: int, variant: Variant = Variant()) -> dict:
    from genlab.train import train

    k = variant.inner_steps
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_cfg(
            [
                *overrides,
                "logger=csv",
                "test=false",
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={(steps + warmup) // k}",
                "trainer.limit_val_batches=0",
                "trainer.num_sanity_val_steps=0",
                "trainer.enable_model_summary=false",
                f"trainer.precision={variant.precision}",
                f"compile={str(variant.compile).lower()}",
                f"inner_steps={k}",
            ],
            Path(out),
        )
        with open_dict(cfg):
            cfg.callbacks["timer"] = {"_target_": f"{__name__}.StepTimer", "warmup": warmup // k}
        reset_peak_memory(_device())
        _, objs = train(cfg)
        timer = next(c for c in objs["trainer"].callbacks if isinstance(c, StepTimer))
        return {"rate": timer.rate, "peak_mb": peak_memory_mb(_device())}


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


def _hand_step(model, opts, x: torch.Tensor, i: int) -> None:
    """One training step of ``model`` written out by hand: the family's objective, its
    optimizer(s), nothing else."""
    if hasattr(model, "d_objective"):  # GANs: a critic step, then (every n_critic) G
        opt_g, opt_d = opts
        real = model.preprocess(x)
        z = model.noise(x.shape[0])
        with torch.no_grad():
            d_real, d_fake = model.d_inputs(real, z)
        d_loss = model.d_objective(d_real, d_fake, z)["d_loss"]
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        if i % model.hparams.n_critic == 0:
            z = model.noise(x.shape[0])
            d_real, d_fake = model.d_inputs(real, z)
            g_loss = model.g_objective(real, d_real, d_fake, z)["g_loss"]
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            if model.use_ema:
                model.update_ema()
        return
    (opt,) = opts
    x = model.preprocess(x)  # binarisation / dequantisation, on the device
    if hasattr(model, "elbo"):  # VAE: recon + beta KL
        t = model.elbo(x)
        loss = (t["recon"] + model.hparams.beta * t["kl"]).mean()
    else:  # flows: -log p(x)
        loss = -model.log_prob(x).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


# The hand loop's optimizer implementation: "torch" (torch.optim's default, what a plain
# loop gets) or "genlab" (the same fused kernels as the runner: overhead only).
HAND_OPTIMIZER = {"implementation": "torch"}


def hand_loop(overrides: list[str], steps: int, warmup: int, variant: Variant = Variant()) -> dict:
    """The same model trained by a plain PyTorch loop on the same in-memory tensors
    (compiled networks and autocast as the variant says)."""
    from genlab.compile import compile_networks

    cfg, dm, model = _build(overrides)
    device = _device()
    dm.setup()
    x_all = dm.splits["train"][0].to(device)  # uint8 (N, C, H, W)
    model = model.to(device).train()
    if variant.compile:
        compile_networks(model)
    opts = model.configure_optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    opts = [o["optimizer"] if isinstance(o, dict) else o for o in opts]
    if HAND_OPTIMIZER["implementation"] == "torch":
        # What a hand-written loop gets from torch.optim.Adam(params, lr=...): torch's
        # default implementation, not the fused kernel genlab's optimizers use.
        for opt in opts:
            for group in opt.param_groups:
                if "fused" in group:
                    group["fused"] = None
    bs, n = cfg.data.batch_size, x_all.shape[0]
    perm = torch.randperm(n, device=device)
    bf16 = variant.precision.startswith("bf16")
    t0, images = 0.0, 0
    reset_peak_memory(device)
    for i in range(steps + warmup):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        j = perm[(i * bs) % n : (i * bs) % n + bs]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _hand_step(model, opts, x_all[j], i)
        if i >= warmup:
            images += j.shape[0]
    _sync(device)
    return {"rate": images / (time.perf_counter() - t0), "peak_mb": peak_memory_mb(device)}


def bare_lightning(overrides: list[str], steps: int, warmup: int, variant: Variant = Variant()):
    """The same model in a bare Lightning Trainer: no logger, callbacks, checkpoints or bar
    (eager). Separates Lightning's own per-step cost from what genlab adds on top of it."""
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
        precision=variant.precision,
        callbacks=[timer],
    )
    reset_peak_memory(_device())
    trainer.fit(model, datamodule=dm)
    return {"rate": timer.rate, "peak_mb": peak_memory_mb(_device())}


def _profile(fn, overrides: list[str], steps: int, variant: Variant):
    import cProfile
    import pstats

    profile = cProfile.Profile()
    profile.enable()
    fn(overrides, steps, 0, variant)
    profile.disable()
    return pstats.Stats(profile)


def calls_per_step(fn, overrides: list[str], variant: Variant = Variant()) -> float:
    """Python function calls per optimizer step of ``fn`` (runner or bare Lightning):
    the difference between runs of ``long`` and ``short`` steps, under cProfile. Unlike
    images/s it does not depend on what else the machine is doing."""
    k = variant.inner_steps
    short, long = max(8, 2 * k), max(40, 6 * k)
    a = _profile(fn, overrides, short, variant).total_calls
    b = _profile(fn, overrides, long, variant).total_calls
    return round((b - a) / (long - short), 1)


def _category(filename: str) -> str:
    """Where a profiled function lives: genlab, Lightning, torch.optim, torch, Python."""
    f = filename.replace(os.sep, "/")
    runner_parts = ("/callbacks/", "/data/", "_lightning.py", "steps.py", "models/common.py")
    if "benchmark.py" in f or ("/genlab/" in f and any(p in f for p in runner_parts)):
        return "genlab runner (callbacks, step logging, batching)"
    if "/genlab/" in f:
        return "genlab family code (the step's maths, as in the hand loop)"
    if "/lightning/" in f or "/lightning_utilities/" in f or "/lightning_fabric/" in f:
        return "Lightning (loop, hooks, progress tracking)"
    if "/torch/optim/" in f:
        return "torch.optim"
    if "/torch/" in f:
        return "torch's Python code (modules, autograd glue)"
    if f.startswith("~") or "<built-in" in f:
        return "C functions (tensor ops, builtins such as next / isinstance)"
    return "Python stdlib (contextlib, logging, ...)"


def step_profile(overrides: list[str], variant: Variant = Variant()) -> dict[str, float]:
    """Microseconds per optimizer step of the runner, by where the time goes (cProfile's
    own time per function, long minus short run; profiling inflates Python-heavy code, so
    read the shares, not the absolute sum)."""
    short, long = 8, 88
    _profile(runner, overrides, short, variant)  # first-run costs (imports, caches) out
    stats = [_profile(runner, overrides, n, variant).stats for n in (short, long)]
    out: dict[str, float] = {}
    for sign, st in ((-1, stats[0]), (1, stats[1])):
        for (filename, _, _), (_, _, tottime, _, _) in st.items():
            key = _category(filename)
            out[key] = out.get(key, 0.0) + sign * tottime
    per_step = {k: round(1e6 * v / (long - short), 1) for k, v in out.items()}
    return dict(sorted(per_step.items(), key=lambda kv: -kv[1]))


# name -> overrides (with the batch size). The tiny case is almost all loop overhead: its
# per-step time difference is the runner's fixed cost per step on this machine.
CASES = {
    "vae_mlp_mnist": ["model=vae", "model/net=mlp", "data=mnist", "data.batch_size=128"],
    # NICE as in the paper (4 couplings of 5 x 1000 ReLU units), the paper's batch of 200
    "nice_mnist": ["model=nice", "data=mnist", "data.batch_size=200"],
    # the GAN default: DCGAN generator with batch norm, spectrally normalised critic, hinge
    "gan_conv_mnist": ["model=gan", "data=mnist", "data.batch_size=128"],
    # Glow: 2 levels x 4 steps, 64-channel conditioners, invertible 1x1 convolutions
    "glow_mnist": ["model=glow", "data=mnist", "data.batch_size=64"],
    "vae_tiny_digits": [
        "model=vae",
        "model.net.hidden_sizes=[8]",
        "model.latent_dim=2",
        "data=digits",
        "data.batch_size=16",
    ],
}
# Relative compute per image (the VAE = 1): fewer, longer timed steps for the heavy ones.
STEP_SCALE = {"nice_mnist": 4, "gan_conv_mnist": 4, "glow_mnist": 15}


def measure(
    overrides: list[str], steps: int, warmup: int, repeats: int, variant: Variant = Variant(),
    bare: bool = True, calls: bool = True,
) -> dict:  # fmt: skip
    """Hand loop, bare Lightning (eager variants) and the runner, in rotating order (this
    VM's speed drifts by tens of percent over seconds); ratios are medians over rounds of
    adjacent runs."""
    fns = {"hand": hand_loop, "runner": runner}
    if bare and not variant.compile and variant.inner_steps == 1:
        fns = {"hand": hand_loop, "lightning": bare_lightning, "runner": runner}
    rates: dict[str, list[float]] = {k: [] for k in fns}
    peaks: dict[str, float] = {k: 0.0 for k in fns}
    for i in range(repeats):
        order = list(fns)[i % len(fns) :] + list(fns)[: i % len(fns)]
        for k in order:
            out = fns[k](overrides, steps, warmup, variant)
            rates[k].append(out["rate"])
            peaks[k] = max(peaks[k], out["peak_mb"])

    def ratio(a: str, b: str) -> tuple[float, list[float]]:
        r = [y / x for x, y in zip(rates[a], rates[b], strict=True)]
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        return round(statistics.median(r), 3), [round(q[0], 3), round(q[2], 3)]

    bs = next(int(o.split("=")[1]) for o in overrides if o.startswith("data.batch_size="))
    med = {k: statistics.median(v) for k, v in rates.items()}
    r_hand, iqr = ratio("hand", "runner")
    out = {
        "variant": variant.name,
        "device": "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "batch_size": bs,
        "steps_per_measurement": steps,
        "repeats": repeats,
        **{f"{k}_images_per_s": round(v, 1) for k, v in med.items()},
        "ratio": r_hand,  # runner / hand, the headline
        "ratio_iqr": iqr,
        "runner_overhead_us_per_step": round(1e6 * bs * (1 / med["runner"] - 1 / med["hand"]), 1),
        **{f"{k}_peak_mb": v for k, v in peaks.items()},
        "all_images_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
    }
    if "lightning" in fns:
        out["lightning_vs_hand"] = ratio("hand", "lightning")[0]
        out["runner_vs_lightning"] = ratio("lightning", "runner")[0]
    if calls:  # deterministic: Python calls per step (the hand loop's are a few dozen)
        out["runner_calls_per_step"] = calls_per_step(runner, overrides, variant)
        if "lightning" in fns:
            out["lightning_calls_per_step"] = calls_per_step(bare_lightning, overrides)
    return out


def batch_scaling(
    overrides: list[str], sizes: list[int], steps: int, warmup: int, repeats: int
) -> dict[int, dict]:
    """Images/s and peak memory of the hand loop and the runner (eager) per batch size."""
    base = [o for o in overrides if not o.startswith("data.batch_size=")]
    return {
        b: measure([*base, f"data.batch_size={b}"], steps, warmup, repeats, bare=False,
                   calls=False)
        for b in sizes
    }  # fmt: skip


def _print_table(results: dict) -> None:
    print(
        f"\n{'case':<16} {'variant':<16} {'device':<6} {'thr':>3} {'hand':>8} {'runner':>8}"
        f" {'runner/hand':>11} {'IQR':>14} {'hand MiB':>9} {'runner MiB':>10} {'calls/step':>10}"
    )
    for name, by_variant in results.items():
        for v in by_variant.values():
            print(
                f"{name:<16} {v['variant']:<16} {v['device'][:6]:<6} {v['torch_threads']:>3} "
                f"{v['hand_images_per_s']:>8.0f} {v['runner_images_per_s']:>8.0f} "
                f"{v['ratio']:>11.3f} {str(v['ratio_iqr']):>14} {v['hand_peak_mb']:>9.0f} "
                f"{v['runner_peak_mb']:>10.0f} {v.get('runner_calls_per_step', 0):>10.0f}"
            )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument(
        "--variants", nargs="*", default=["eager", "compiled"], choices=list(VARIANTS),
        help="eager, compiled, bf16, compiled_bf16 (GPU), inner4, compiled_inner4",
    )  # fmt: skip
    ap.add_argument("--batch-size", type=int, help="override every case's batch size")
    ap.add_argument("--steps", type=int, default=150, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=16, help="untimed steps (compilation too)")
    ap.add_argument("--repeats", type=int, default=12, help="rounds of hand / PL / runner")
    ap.add_argument(
        "--scaling", nargs="*", type=int, default=[],
        help="batch sizes for the VAE and NICE scaling table (e.g. 64 128 256 512 1024)",
    )  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="where a tiny step's time goes")
    ap.add_argument("--no-calls", action="store_true", help="skip the cProfile call counts")
    ap.add_argument("--data-dir", default=os.environ.get("GENLAB_DATA", "data"))
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument(
        "--hand-optimizer", choices=["torch", "genlab"], default="torch",
        help="the hand loop's optimizer: torch's default implementation (a plain loop), or "
        "genlab's fused one (the runner's: compares per-step overhead only)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    HAND_OPTIMIZER["implementation"] = args.hand_optimizer

    def case(name: str) -> list[str]:
        overrides = [*CASES[name], f"paths.data_dir={args.data_dir}"]
        if args.batch_size:
            overrides = [o for o in overrides if not o.startswith("data.batch_size=")]
            overrides.append(f"data.batch_size={args.batch_size}")
        if "data=digits" not in overrides:
            overrides.append("data.download=false")
        return overrides

    def steps_of(name: str) -> int:
        steps = max(8, args.steps // STEP_SCALE.get(name, 1))
        return min(steps, 80) if "digits" in name else steps  # one digits epoch

    results: dict = {"hand_optimizer": args.hand_optimizer, "cases": {}}
    for name in args.cases:
        results["cases"][name] = {
            v: measure(
                case(name), steps_of(name), args.warmup, args.repeats, VARIANTS[v],
                calls=not args.no_calls,
            )
            for v in args.variants
        }  # fmt: skip
    _print_table(results["cases"])
    if args.scaling:
        results["scaling"] = {}
        for name in ("vae_mlp_mnist", "nice_mnist"):
            table = batch_scaling(case(name), args.scaling, steps_of(name) // 2, 4, 1)
            results["scaling"][name] = table
            print(f"\n{name}: batch, hand img/s, runner img/s, hand MiB, runner MiB")
            for b, v in table.items():
                print(
                    f"  {b:>5} {v['hand_images_per_s']:>9.0f} {v['runner_images_per_s']:>9.0f}"
                    f" {v['hand_peak_mb']:>9.0f} {v['runner_peak_mb']:>9.0f}"
                )
    if args.profile:
        tiny = case("vae_tiny_digits")
        results["profile_us_per_step"] = {
            v: step_profile(tiny, VARIANTS[v]) for v in ("eager", "inner4")
        }
        for v, table in results["profile_us_per_step"].items():
            print(f"\nvae_tiny_digits, {v}: microseconds per optimizer step under cProfile")
            for k, us in table.items():
                print(f"  {us:>8.1f}  {k}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
