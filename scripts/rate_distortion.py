"""Rate-distortion and information-plane plots of a beta sweep (VAE, CVAE or VIB runs).

    python train.py -m experiment=vae_mnist model.beta=0.1,0.3,1,3 logger=csv
    python scripts/rate_distortion.py multirun/<date>/<time> --out experiments/vae_beta_mnist

Each PATH is either a Hydra multirun folder, whose numbered sub-folders holding a
.hydra/config.yaml are taken as its runs, or a single run folder; several PATHs are pooled
into one sweep. Each run gives one point: its model.beta (from .hydra/config.yaml) and the
last logged value of each <split>/... column of csv/metrics.csv (--split, default test).
Runs without such values (unfinished: no test row yet) are skipped with a warning. All runs
must be of one family: VAE-type (<split>/recon and <split>/kl logged) or VIB (<split>/ce and
<split>/kl). Writes into --out a table rd_table.md and rd_table.csv (also printed) and a plot
(needs matplotlib; without it only the tables are written).

VAE-type runs -> rate_distortion.png. The negative ELBO splits into two terms in nats per
image: the distortion D = E[-log p(x|z)] (test/recon), how badly the code reconstructs
the image, and the rate R = E KL(q(z|x) || p(z)) (test/kl), how much information the code
carries about the image. Training with loss D + beta * R puts each beta at one point (R, D)
of the plane. Points with equal ELBO lie on the dashed lines D + R = const (slope -1); the
lower-left line is the better ELBO. beta = 1 is the run that optimises the ELBO itself;
beta < 1 buys lower distortion at a higher rate (sharper reconstructions, a code that the
prior fits less well), beta > 1 the reverse (towards R = 0, where the decoder ignores z).
Several betas can land near the same iso-ELBO line: the ELBO alone does not tell which
rate a model uses. The table also gives -ELBO = D + R and, where logged, the IWAE bound.

VIB runs -> information_plane.png. Left: the information plane, I(Z;Y) >= H(Y) - CE
(test/izy, nats) against the rate E KL(q(z|x) || r(z)) >= I(Z;X) (test/kl, nats, log x),
one point per beta; the dotted line is H(Y) (= izy + ce), the most I(Z;Y) can be. Larger
beta squeezes the code (less I(Z;X)) until it loses label information. Right: test error
(%) against beta on a log axis, with one z draw (test/error) and, where logged, with the
softmax averaged over several z draws (test/error_avg). beta = 0 runs (no bottleneck)
cannot sit on a log axis: they are drawn as squares at a position one decade left of the
smallest positive beta, labelled "0" and cut off by a dotted line.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

FAMILIES = {"vae": "VAE-type (recon + kl)", "vib": "VIB (ce + kl)"}


@dataclass
class Run:
    """One finished run: its folder, beta, model/data names and last <split> metrics."""

    path: Path
    beta: float
    model: str
    data: str
    family: str
    metrics: dict[str, float] = field(default_factory=dict)
    epochs: int = 0

    @property
    def neg_elbo(self) -> float:
        """-ELBO = distortion + rate (VAE-type runs)."""
        return self.metrics["recon"] + self.metrics["kl"]


def warn(msg: str) -> None:
    """One line to stderr."""
    print(f"warning: {msg}", file=sys.stderr)


def find_run_dirs(paths: list[Path]) -> list[Path]:
    """Run folders of the given run or multirun folders, in order, without duplicates."""
    found: list[Path] = []
    for p in paths:
        if (p / ".hydra" / "config.yaml").is_file():
            found.append(p)
        elif p.is_dir():
            subs = [c for c in p.iterdir() if (c / ".hydra" / "config.yaml").is_file()]
            subs.sort(
                key=lambda c: (not c.name.isdigit(), int(c.name) if c.name.isdigit() else 0, c.name)
            )
            if not subs:
                warn(f"{p}: no run folders (none has .hydra/config.yaml)")
            found.extend(subs)
        else:
            warn(f"{p}: not a folder")
    seen: set[Path] = set()
    out = []
    for d in found:
        if d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def read_metrics(path: Path, split: str) -> tuple[dict[str, float], int]:
    """The last non-empty value of each `<split>/name` column (keyed by name) and the number
    of epochs with a `time/epoch_s` entry (counted once per epoch, so a resumed run that logs
    an epoch again is not counted twice)."""
    prefix = f"{split}/"
    last: dict[str, float] = {}
    epochs: set[str] = set()
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            for key, val in row.items():
                if key and key.startswith(prefix) and val not in (None, ""):
                    try:
                        last[key[len(prefix) :]] = float(val)
                    except ValueError:
                        continue
            if row.get("time/epoch_s"):
                epochs.add(row.get("epoch") or f"row {i}")
    return last, len(epochs)


def family_of(metrics: dict[str, float]) -> str | None:
    """'vib' with ce and kl, 'vae' with recon and kl, else None."""
    if "kl" in metrics and "ce" in metrics:
        return "vib"
    if "kl" in metrics and "recon" in metrics:
        return "vae"
    return None


def _short(target: object) -> str:
    """'genlab.models.VAE' -> 'VAE'."""
    return str(target).rsplit(".", 1)[-1] if target else "?"


def load_run(run_dir: Path, split: str) -> Run | None:
    """The Run of a folder, or None (with a warning) when it is not usable."""
    try:
        cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        warn(f"skip {run_dir}: unreadable .hydra/config.yaml ({type(e).__name__})")
        return None
    section = lambda k: cfg.get(k) if isinstance(cfg, dict) and isinstance(cfg.get(k), dict) else {}
    model, data = section("model"), section("data")
    try:
        beta = float(model["beta"])
    except (KeyError, TypeError, ValueError):
        warn(f"skip {run_dir}: no numeric model.beta in .hydra/config.yaml")
        return None
    csv_path = run_dir / "csv" / "metrics.csv"
    if not csv_path.is_file():
        warn(f"skip {run_dir}: no csv/metrics.csv")
        return None
    metrics, epochs = read_metrics(csv_path, split)
    if not metrics:
        warn(f"skip {run_dir}: no {split}/ metrics in csv/metrics.csv (unfinished run?)")
        return None
    family = family_of(metrics)
    if family is None:
        warn(f"skip {run_dir}: {split}/ metrics have neither recon+kl nor ce+kl")
        return None
    return Run(
        run_dir,
        beta,
        _short(model.get("_target_")),
        _short(data.get("_target_")),
        family,
        metrics,
        epochs,
    )


def load_runs(paths: list[Path], split: str) -> list[Run]:
    """Usable runs of all paths, sorted by beta; SystemExit if none or if families mix."""
    runs = [r for d in find_run_dirs(paths) if (r := load_run(d, split)) is not None]
    if not runs:
        raise SystemExit(f"error: no usable run (with {split}/ metrics) under {_join(paths)}")
    families = {r.family for r in runs}
    if len(families) > 1:
        counts = ", ".join(
            f"{sum(r.family == f for r in runs)} {FAMILIES[f]}" for f in sorted(families)
        )
        raise SystemExit(f"error: runs mix model families ({counts}); pass them separately")
    return sorted(runs, key=lambda r: (r.beta, str(r.path)))


def _join(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def best_elbo(runs: list[Run]) -> Run:
    """The VAE-type run with the lowest -ELBO (the first of equals in beta order)."""
    return min(runs, key=lambda r: r.neg_elbo)


def table(runs: list[Run]) -> tuple[list[str], list[list[object]]]:
    """Header and rows (numbers as floats/ints, None where missing) of the family's table."""
    has = lambda k: any(k in r.metrics for r in runs)
    if runs[0].family == "vae":
        header = ["beta", "rate", "distortion", "neg_elbo"]
        header += ["nll_iwae"] * has("nll_iwae") + ["epochs", "run"]
        rows = [
            [r.beta, r.metrics["kl"], r.metrics["recon"], r.neg_elbo]
            + [r.metrics.get("nll_iwae")] * has("nll_iwae")
            + [r.epochs, str(r.path)]
            for r in runs
        ]
    else:
        pct = lambda r, k: 100 * r.metrics[k] if k in r.metrics else None
        header = ["beta", "rate", "ce", "izy", "error_pct"]
        header += ["error_avg_pct"] * has("error_avg") + ["epochs", "run"]
        rows = [
            [r.beta, r.metrics["kl"], r.metrics["ce"], r.metrics.get("izy"), pct(r, "error")]
            + [pct(r, "error_avg")] * has("error_avg")
            + [r.epochs, str(r.path)]
            for r in runs
        ]
    return header, rows


MD_NAMES = {
    "beta": "beta",
    "rate": "rate R = kl (nats)",
    "distortion": "distortion D = recon (nats)",
    "neg_elbo": "-ELBO = D + R",
    "nll_iwae": "-log p(x), IWAE (nats)",
    "ce": "ce (nats)",
    "izy": "I(Z;Y) >= izy (nats)",
    "error_pct": "error %",
    "error_avg_pct": "error_avg %",
    "epochs": "epochs",
    "run": "run",
}


def _cell(name: str, v: object) -> str:
    if v is None:
        return ""
    if name == "beta":
        return f"{v:g}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def markdown(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (numbers right-aligned)."""
    lines = ["| " + " | ".join(MD_NAMES.get(h, h) for h in header) + " |"]
    lines.append("|" + "".join(" --- |" if h == "run" else " ---: |" for h in header))
    lines += [
        "| " + " | ".join(_cell(h, v) for h, v in zip(header, r, strict=True)) + " |" for r in rows
    ]
    return "\n".join(lines)


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    """The table as CSV, full precision, empty cells where missing."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([["" if v is None else v for v in r] for r in rows])


def _title(runs: list[Run], split: str) -> str:
    models = "/".join(dict.fromkeys(r.model for r in runs))
    data = "/".join(dict.fromkeys(r.data for r in runs))
    return f"{models} on {data}: beta sweep, {split} split ({len(runs)} runs)"


def plot_rate_distortion(runs: list[Run], out: Path, split: str) -> None:
    """Distortion vs rate, one point per beta, iso-ELBO lines, the best ELBO marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rate = [r.metrics["kl"] for r in runs]
    dist = [r.metrics["recon"] for r in runs]
    best = best_elbo(runs)
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=120)
    ax.plot(rate, dist, marker="o", c="C0", label="one run per beta (joined in beta order)")
    for r, x, y in zip(runs, rate, dist, strict=True):
        ax.annotate(f"β={r.beta:g}", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.plot(
        best.metrics["kl"],
        best.metrics["recon"],
        marker="*",
        ms=16,
        c="C3",
        ls="none",
        label=f"best ELBO: beta={best.beta:g}, -ELBO={best.neg_elbo:.2f}",
    )
    ax.margins(0.12)
    ax.autoscale_view()
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    # iso-ELBO lines through the best point and the smallest- and largest-beta points
    levels = list(dict.fromkeys(round(r.neg_elbo, 6) for r in (best, runs[0], runs[-1])))
    for i, c in enumerate(levels):
        ax.plot(
            [x0, x1],
            [c - x0, c - x1],
            ls="--",
            lw=0.8,
            c="C3" if i == 0 else "gray",
            label="iso-ELBO: D + R = const (slope -1)" if i == 0 else None,
        )
        tx = x0 + 0.03 * (x1 - x0)
        if not y0 <= c - tx <= y1:  # the line enters through the bottom edge
            tx = c - (y0 + 0.03 * (y1 - y0))
        if x0 <= tx <= x1 and y0 <= c - tx <= y1:
            ax.text(tx, c - tx, f" D+R={c:.1f}", fontsize=7, color="dimgray", va="bottom")
    ax.set_xlabel("rate R = E KL(q(z|x) || p(z))  [nats per image]")
    ax.set_ylabel("distortion D = E[-log p(x|z)]  [nats per image]")
    ax.set_title(_title(runs, split), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def _beta_ticks(pos: list[float]) -> list[float]:
    """The positive betas themselves when few, else the decades they span."""
    if len(pos) <= 8:
        return pos
    lo, hi = math.ceil(math.log10(pos[0])), math.floor(math.log10(pos[-1]))
    return [10.0**k for k in range(lo, hi + 1)]


def plot_information_plane(runs: list[Run], out: Path, split: str) -> None:
    """Left: izy vs rate (log x); right: error % vs beta (log x, beta = 0 left of a cut)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, NullLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=120)
    with_izy = [r for r in runs if "izy" in r.metrics]
    rate = [r.metrics["kl"] for r in with_izy]
    izy = [r.metrics["izy"] for r in with_izy]
    left.plot(rate, izy, marker="o", c="C0", label="one run per beta (joined in beta order)")
    for r, x, y in zip(with_izy, rate, izy, strict=True):
        left.annotate(
            f"β={r.beta:g}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8
        )
    if with_izy:
        h_y = sum(r.metrics["izy"] + r.metrics["ce"] for r in with_izy) / len(with_izy)
        left.axhline(h_y, ls=":", c="gray", label=f"H(Y) = {h_y:.3f} nats (most I(Z;Y) can be)")
    if rate and min(rate) > 0:
        left.set_xscale("log")
    left.margins(0.1)
    left.set_xlabel("rate E KL(q(z|x) || r(z)) >= I(Z;X)  [nats]")
    left.set_ylabel("H(Y) - CE <= I(Z;Y)  [nats]")
    left.set_title("information plane", fontsize=10)
    left.legend(fontsize=8)
    left.grid(alpha=0.3, which="both")

    pos = sorted({r.beta for r in runs if r.beta > 0})
    x_zero = pos[0] / 10 if pos else 1.0
    xs = [r.beta if r.beta > 0 else x_zero for r in runs]
    lines = [("error", "one z draw (error)", "o")]
    if any("error_avg" in r.metrics for r in runs):
        lines.append(("error_avg", "softmax averaged over z draws (error_avg)", "s"))
    for i, (key, label, marker) in enumerate(lines):
        pts = [
            (x, 100 * r.metrics[key], r.beta)
            for x, r in zip(xs, runs, strict=True)
            if key in r.metrics
        ]
        right.plot(
            [x for x, _, b in pts if b > 0],
            [y for _, y, b in pts if b > 0],
            marker=marker,
            c=f"C{i}",
            label=label,
        )
        zero = [(x, y) for x, y, b in pts if b == 0]
        if zero:
            right.plot(
                [x for x, _ in zero],
                [y for _, y in zero],
                marker=marker,
                ms=8,
                ls="none",
                mfc="none",
                c=f"C{i}",
            )
    right.set_xscale("log")
    ticks = _beta_ticks(pos)
    if any(r.beta == 0 for r in runs):
        ticks = [x_zero, *ticks]
        cut = math.sqrt(x_zero * pos[0]) if pos else x_zero * 3
        right.axvline(cut, ls=":", c="gray", label="axis cut: beta = 0 runs (open markers) left")
    right.xaxis.set_minor_locator(NullLocator())
    right.xaxis.set_minor_formatter(NullFormatter())
    right.set_xticks(ticks, ["0" if t == x_zero and t not in pos else f"{t:g}" for t in ticks])
    cut_note = "; beta = 0 left of the dotted line" if any(r.beta == 0 for r in runs) else ""
    right.set_xlabel(f"beta  (log scale{cut_note})")
    right.set_ylabel(f"{split} error  [%]")
    right.set_title("error vs beta", fontsize=10)
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(_title(runs, split), fontsize=10)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Read the runs, print and write the table, draw the family's plot."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="multirun or run folders")
    ap.add_argument("--out", type=Path, required=True, help="folder for the tables and the plot")
    ap.add_argument("--split", default="test", help="metric prefix to read (default: test)")
    args = ap.parse_args(argv)

    runs = load_runs(args.paths, args.split)
    header, rows = table(runs)
    md = markdown(header, rows)
    note = ""
    if runs[0].family == "vae":
        best = best_elbo(runs)
        note = f"best ELBO: beta={best.beta:g}, -ELBO={best.neg_elbo:.2f} nats ({best.path})"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rd_table.md").write_text(md + ("\n\n" + note if note else "") + "\n")
    write_csv(args.out / "rd_table.csv", header, rows)
    print(md)
    if note:
        print("\n" + note)
    print(f"wrote {args.out / 'rd_table.md'}, {args.out / 'rd_table.csv'}")

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warn("matplotlib is not installed: no plot written (pip install matplotlib)")
        return
    if runs[0].family == "vae":
        png = args.out / "rate_distortion.png"
        plot_rate_distortion(runs, png, args.split)
    else:
        png = args.out / "information_plane.png"
        plot_information_plane(runs, png, args.split)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
