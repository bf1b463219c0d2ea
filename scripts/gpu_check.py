"""The GPU check: every family trains briefly on MNIST, then the throughput benchmark.

    python scripts/gpu_check.py                 # on a GPU machine: under 8 minutes on one GPU
    python scripts/gpu_check.py --smoke         # CPU, seconds: digits, fast_dev_run (CI)

Writes ``<out-dir>/gpu_<device>.json`` and ``gpu_<device>.md`` (``cpu_smoke`` with
``--smoke``):

1. Each family (every ``conf/model`` config) trains for ``--steps`` optimizer steps on
   MNIST with its defaults (scores off, a validation pass of 10 batches): finite losses,
   the metrics it logged, seconds, peak GPU memory.
2. ``scripts/benchmark.py`` for the MLP VAE, NICE, the conv GAN and Glow at batch 128 and
   512: eager, compiled and bf16-mixed, runner vs hand loop, peak memory.

A time budget (``--budget-s``) skips what would run past it (and says so in the
output) rather than overrunning the machine's lease.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("WANDB_MODE", "disabled")

import benchmark  # noqa: E402  (scripts/benchmark.py, next to this file)

FAMILIES = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
# Families whose phases are counted in epochs: settings that reach every phase quickly.
PHASES = {
    "dbn": ["model.pretrain_epochs=1", "trainer.max_epochs=6"],
    "glann": ["model.glo_epochs=1", "trainer.max_epochs=2"],
}


def device_name() -> str:
    if not torch.cuda.is_available():
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")


def family_run(family: str, data: list[str], steps: int, smoke: bool) -> dict:
    """One short training run of ``family``: finite losses and the metrics it logged."""
    from genlab.train import train

    limits = (
        ["trainer.fast_dev_run=true", "callbacks.image_grids=null"]  # CPU: no sampling
        if smoke
        else [f"trainer.max_steps={steps}", "trainer.limit_val_batches=10"]
    )
    with tempfile.TemporaryDirectory() as out:
        cfg = benchmark.compose_cfg(
            [f"model={family}", *data, *limits, *PHASES.get(family, []), "logger=csv",
             "test=false", "model.monitor=null", "metrics.every_n_epochs=0",
             "metrics.probes=false",
             "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"],
            Path(out),
        )  # fmt: skip
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            metrics, objs = train(cfg)
        except Exception as e:  # noqa: BLE001 - the check reports every family's outcome
            return {"ok": False, "error": f"{type(e).__name__}: {e}"[:500],
                    "trace": traceback.format_exc()[-1500:]}  # fmt: skip
        seconds = time.perf_counter() - start
    losses = {k: v for k, v in metrics.items() if k.startswith("train/") and "loss" in k}
    finite = bool(losses) and all(math.isfinite(v) for v in losses.values())
    return {
        "ok": finite,
        "seconds": round(seconds, 1),
        "global_step": objs["trainer"].global_step,
        "losses": {k: round(v, 4) for k, v in losses.items()},
        "metrics_logged": sorted(metrics),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if torch.cuda.is_available()
        else None,
    }


def markdown(result: dict) -> str:
    lines = [f"# GPU check: {result['device']}", "", f"torch {result['torch']}, "
             f"{result['seconds']:.0f} s in all.", "", "## Families", "",
             "| family | ok | steps | s | peak GPU MiB | losses |",
             "| --- | --- | ---: | ---: | ---: | --- |"]  # fmt: skip
    for fam, r in result["families"].items():
        if "error" in r or "skipped" in r:
            lines.append(f"| {fam} | no | | | | {r.get('error') or r.get('skipped')} |")
            continue
        losses = ", ".join(f"{k}={v}" for k, v in r["losses"].items())
        lines.append(
            f"| {fam} | {'yes' if r['ok'] else 'NO'} | {r['global_step']} | {r['seconds']} | "
            f"{r['peak_gpu_mb'] or ''} | {losses} |"
        )
    lines += ["", "## Throughput (images/s; runner / hand loop)", "",
              "| case | batch | variant | hand | runner | runner/hand | hand MiB | runner MiB |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for key, cases in result["benchmark"].items():
        if not isinstance(cases, dict):
            lines.append(f"| {key} | | | | | {cases} | | |")
            continue
        for case, variants in cases.items():
            for v in variants.values():
                lines.append(
                    f"| {case} | {v['batch_size']} | {v['variant']} | "
                    f"{v['hand_images_per_s']:.0f} | {v['runner_images_per_s']:.0f} | "
                    f"{v['ratio']:.3f} | {v['hand_peak_mb']:.0f} | {v['runner_peak_mb']:.0f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU-sized: digits, fast_dev_run")
    ap.add_argument("--families", nargs="*", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps per family")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new parts after")
    ap.add_argument("--data-dir", default=os.environ.get("GENLAB_DATA", "data"))
    ap.add_argument("--out-dir", type=Path, default=REPO / "experiments" / "benchmarks")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    name = "cpu_smoke" if args.smoke else f"gpu_{device_name()}"
    data = (
        ["data=digits"]
        if args.smoke
        else ["data=mnist", "data.download=false", f"paths.data_dir={args.data_dir}"]
    )
    result: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "families": {},
        "benchmark": {},
    }

    def over_budget() -> bool:
        return time.perf_counter() - start > args.budget_s

    for family in args.families:
        if over_budget():
            result["families"][family] = {"skipped": "time budget"}
            continue
        result["families"][family] = r = family_run(family, data, args.steps, args.smoke)
        print(f"{family:<14} ok={r['ok']} {r.get('seconds', '')} s {r.get('error', '')}")

    # The benchmark: tiny and fast in the smoke run, the four issue cases otherwise.
    if args.smoke:
        plans = {"smoke": (["vae_tiny_digits"], ["eager", "inner4"], None, 4, 4)}
    else:
        cases = ["vae_mlp_mnist", "nice_mnist", "gan_conv_mnist", "glow_mnist"]
        variants = ["eager", "compiled", "bf16"]
        plans = {f"batch_{b}": (cases, variants, b, 60, 10) for b in (128, 512)}
    for key, (cases, variants, batch, steps, warmup) in plans.items():
        if over_budget():
            result["benchmark"][key] = "skipped: time budget"
            continue
        argv_b = ["--cases", *cases, "--variants", *variants, "--steps", str(steps),
                  "--warmup", str(warmup), "--repeats", "1", "--no-calls",
                  "--data-dir", args.data_dir]  # fmt: skip
        if batch:
            argv_b += ["--batch-size", str(batch)]
        result["benchmark"][key] = benchmark.main(argv_b)["cases"]

    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{name}.md").write_text(markdown(result))
    failed = [f for f, r in result["families"].items() if not r.get("ok", True)]
    print(f"wrote {args.out_dir / name}.json/.md in {result['seconds']:.0f} s; failed: {failed}")
    return result


if __name__ == "__main__":
    main()
