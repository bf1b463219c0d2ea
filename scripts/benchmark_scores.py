"""Cost of the sample scores: feature extraction per 1,000 images (Inception-v3, genlab's
classifier) and the statistics (FID, KID, precision / recall / density / coverage).

    python scripts/benchmark_scores.py --out experiments/benchmarks/scores_cpu.json
    python scripts/benchmark_scores.py --images 200 --batch-sizes 25 50 100

Inputs are 28 x 28 grey uint8 images (MNIST's shape; the Inception cost does not depend
on it: every image becomes 3 x 299 x 299). Times are medians over ``--repeats`` rounds
after one warm-up batch; ``layout`` compares the channels-last network genlab uses with
the default contiguous layout. Statistics are timed on random 2048-d features at
``--n`` points per set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from genlab.metrics.features import FeatureNet
from genlab.metrics.sample_quality import frechet_distance, kernel_inception_distance, prdc


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100, help="images per timed round")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[50])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000], help="points per set")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from genlab.metrics.inception import InceptionFeatures

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 1, 28, 28), dtype=torch.uint8, generator=g)
    results: dict = {"threads": torch.get_num_threads(), "images": args.images, "features": []}
    inception = InceptionFeatures()
    layouts = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
    with torch.no_grad():
        for layout, fmt in layouts.items():
            inception.net.to(memory_format=fmt)
            for bs in args.batch_sizes:

                def run(bs=bs, fmt=fmt):
                    for i in range(0, x.shape[0], bs):
                        inception.net(
                            inception.preprocess(x[i : i + bs]).contiguous(memory_format=fmt)
                        )

                s = _time(run, args.repeats)
                row = {"net": "inception", "layout": layout, "batch": bs,
                       "s_per_1000": round(s * 1000 / x.shape[0], 2)}  # fmt: skip
                results["features"].append(row)
                print(json.dumps(row), flush=True)
        net = FeatureNet((1, 28, 28), 10).eval()
        big = x.repeat(50, 1, 1, 1)  # genlab's net is ~1000x cheaper: time more images
        s = _time(lambda: [net(b.float() / 255) for b in big.split(1000)], args.repeats)
        row = {"net": "classifier", "s_per_1000": round(s * 1000 / big.shape[0], 4)}
        results["features"].append(row)
        print(json.dumps(row), flush=True)
    results["statistics"] = []
    for n in args.n:
        a = torch.relu(torch.randn(n, 2048, generator=g))
        b = torch.relu(1.1 * torch.randn(n, 2048, generator=g))
        row = {"n": n, "d": 2048}
        for name, fn in (
            ("fid", frechet_distance),
            ("kid", kernel_inception_distance),
            ("prdc", prdc),
        ):
            row[f"{name}_s"] = round(_time(lambda fn=fn, a=a, b=b: fn(a, b), 1), 2)
        results["statistics"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
