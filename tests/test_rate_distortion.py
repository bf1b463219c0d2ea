"""scripts/rate_distortion.py on fake multirun folders (hand-written configs and metrics.csv)."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "rate_distortion.py"


def _load():
    spec = importlib.util.spec_from_file_location("rate_distortion", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["rate_distortion"] = mod  # dataclasses look their module up here
    spec.loader.exec_module(mod)
    return mod


rd = _load()
HAS_MPL = importlib.util.find_spec("matplotlib") is not None
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# beta -> (recon, kl, nll_iwae or None, epochs); -ELBO = 105, 99, 105: beta = 1 is best
VAE = {0.5: (70.0, 35.0, 98.0, 3), 1.0: (80.0, 19.0, 95.0, 4), 2.0: (96.0, 9.0, None, 2)}
# beta -> (ce, kl, error, error_avg); izy = H(Y) - ce with H(Y) = 2.3
VIB = {
    0.0: (0.05, 400.0, 0.020, 0.019),
    1e-3: (0.04, 60.0, 0.012, 0.011),
    0.1: (0.9, 2.0, 0.3, 0.25),
}
H_Y = 2.3


def write_run(d: Path, target: str, beta: float, epochs: list[dict], test: dict | None) -> Path:
    """A run folder: .hydra/config.yaml and csv/metrics.csv in Lightning's layout (one row of
    val metrics and one of time/epoch_s per epoch, then one test row)."""
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(
        "data:\n  _target_: genlab.data.MNIST\n  batch_size: 100\n"
        f"model:\n  _target_: {target}\n  latent_dim: 8\n  beta: {beta!r}\n  lr: 0.001\n"
        "seed: 0\n"
    )
    rows: list[dict] = []
    for e, val in enumerate(epochs):
        rows.append({"epoch": e, "step": 10 * e + 9, **{f"val/{k}": v for k, v in val.items()}})
        rows.append({"epoch": e, "step": 10 * e + 9, "time/epoch_s": 1.5})
    if test is not None:
        n = len(epochs)
        rows.append({"epoch": n, "step": 10 * n, **{f"test/{k}": v for k, v in test.items()}})
    keys = sorted({k for r in rows for k in r} - {"epoch", "step"})
    (d / "csv").mkdir()
    with open(d / "csv" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "step", *keys])
        w.writeheader()
        w.writerows(rows)
    return d


def vae_sweep(root: Path) -> Path:
    """Multirun folder: jobs 0-2 finished (in beta order 2, 0.5, 1), job 3 unfinished."""
    root.mkdir()
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for job, beta in enumerate([2.0, 0.5, 1.0]):
        recon, kl, iwae, n = VAE[beta]
        # val numbers fall each epoch and end 1 nat above the test numbers
        val = [{"recon": recon + 1 + (n - 1 - e), "kl": kl + 1, "elbo": 0.0} for e in range(n)]
        test = {"recon": recon, "kl": kl, "elbo": -(recon + kl), "loss": recon + beta * kl}
        if iwae is not None:
            test["nll_iwae"] = iwae
        write_run(root / str(job), "genlab.models.VAE", beta, val, test)
    write_run(root / "3", "genlab.models.VAE", 4.0, [{"recon": 150.0, "kl": 3.0}], None)
    return root


def vib_sweep(root: Path) -> Path:
    root.mkdir()
    for job, (beta, (ce, kl, err, err_avg)) in enumerate(VIB.items()):
        test = {"ce": ce, "kl": kl, "izy": H_Y - ce, "error": err, "error_avg": err_avg}
        write_run(root / str(job), "genlab.models.VIB", beta, [{"ce": ce, "kl": kl}] * 2, test)
    return root


def read_table(out: Path) -> list[dict[str, str]]:
    with open(out / "rd_table.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_vae_table_sorted_by_beta_with_neg_elbo_and_best_point(tmp_path, capsys) -> None:
    sweep, out = vae_sweep(tmp_path / "sweep"), tmp_path / "out"
    rd.main([str(sweep), "--out", str(out)])
    rows = read_table(out)
    assert list(rows[0]) == ["beta", "rate", "distortion", "neg_elbo", "nll_iwae", "epochs", "run"]
    assert [float(r["beta"]) for r in rows] == [0.5, 1.0, 2.0]  # sorted, job 3 left out
    for r in rows:
        recon, kl, iwae, n = VAE[float(r["beta"])]
        assert float(r["distortion"]) == pytest.approx(recon)
        assert float(r["rate"]) == pytest.approx(kl)
        assert float(r["neg_elbo"]) == pytest.approx(recon + kl)
        assert r["nll_iwae"] == ("" if iwae is None else str(iwae))
        assert int(r["epochs"]) == n
        assert Path(r["run"]).parent == sweep and Path(r["run"]).name in {"0", "1", "2"}
    cap = capsys.readouterr()
    assert "best ELBO: beta=1, -ELBO=99.00" in cap.out
    assert "| 0.5 | 35.00 | 70.00 | 105.00 | 98.00 | 3 |" in cap.out  # the Markdown table
    md = (out / "rd_table.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 5 and {line.count("|") for line in table} == {8}  # 7 columns
    assert table[1] == "|" + " ---: |" * 6 + " --- |"
    assert "best ELBO: beta=1, -ELBO=99.00" in md
    # the unfinished job is named in a one-line warning
    warnings = [line for line in cap.err.splitlines() if "skip" in line]
    assert len(warnings) == 1 and str(sweep / "3") in warnings[0]
    assert "unfinished" in warnings[0]
    best = rd.best_elbo(rd.load_runs([sweep], "test"))
    assert (best.beta, best.neg_elbo) == (1.0, pytest.approx(99.0))


def test_split_val_takes_last_value_of_each_column(tmp_path) -> None:
    sweep, out = vae_sweep(tmp_path / "sweep"), tmp_path / "out"
    rd.main([str(sweep), "--out", str(out), "--split", "val"])
    rows = {float(r["beta"]): r for r in read_table(out)}
    assert sorted(rows) == [0.5, 1.0, 2.0, 4.0]  # with val metrics, job 3 counts
    assert "nll_iwae" not in read_table(out)[0]  # no val/nll_iwae anywhere: no column
    for beta, (recon, kl, _, _) in VAE.items():
        assert float(rows[beta]["distortion"]) == pytest.approx(recon + 1)  # the last epoch's
        assert float(rows[beta]["rate"]) == pytest.approx(kl + 1)
    assert float(rows[4.0]["neg_elbo"]) == pytest.approx(153.0)


def test_vib_table(tmp_path) -> None:
    sweep, out = vib_sweep(tmp_path / "vib"), tmp_path / "out"
    rd.main([str(sweep), "--out", str(out)])
    rows = read_table(out)
    assert list(rows[0]) == [
        "beta",
        "rate",
        "ce",
        "izy",
        "error_pct",
        "error_avg_pct",
        "epochs",
        "run",
    ]
    assert [float(r["beta"]) for r in rows] == sorted(VIB)
    for r in rows:
        ce, kl, err, err_avg = VIB[float(r["beta"])]
        assert float(r["rate"]) == pytest.approx(kl)
        assert float(r["ce"]) == pytest.approx(ce)  # each column from its own source
        assert float(r["izy"]) == pytest.approx(H_Y - ce)
        assert float(r["error_pct"]) == pytest.approx(100 * err)
        assert float(r["error_avg_pct"]) == pytest.approx(100 * err_avg)
        assert int(r["epochs"]) == 2
    assert not (out / "rate_distortion.png").exists()


@pytest.mark.skipif(not HAS_MPL, reason="matplotlib is not installed")
@pytest.mark.parametrize(
    ("family", "png"), [("vae", "rate_distortion"), ("vib", "information_plane")]
)
def test_plots_are_written(tmp_path, family: str, png: str) -> None:
    sweep = (vae_sweep if family == "vae" else vib_sweep)(tmp_path / "sweep")
    rd.main([str(sweep), "--out", str(tmp_path / "out")])
    data = (tmp_path / "out" / f"{png}.png").read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000  # a real figure, not a stub
    assert [p.name for p in (tmp_path / "out").glob("*.png")] == [f"{png}.png"]


def test_without_matplotlib_tables_are_still_written(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "out"
    rd.main([str(vae_sweep(tmp_path / "sweep")), "--out", str(out)])
    assert len(read_table(out)) == 3
    assert not list(out.glob("*.png"))
    assert "matplotlib is not installed" in capsys.readouterr().err


def test_run_folders_given_directly_are_pooled(tmp_path) -> None:
    sweep, out = vae_sweep(tmp_path / "sweep"), tmp_path / "out"
    rd.main([str(sweep / "2"), str(sweep / "0"), str(sweep / "2"), "--out", str(out)])
    rows = read_table(out)
    assert [float(r["beta"]) for r in rows] == [1.0, 2.0]  # the repeated folder once
    assert [Path(r["run"]).name for r in rows] == ["2", "0"]


def test_mixing_vae_and_vib_runs_exits(tmp_path) -> None:
    vae, vib = vae_sweep(tmp_path / "vae"), vib_sweep(tmp_path / "vib")
    with pytest.raises(SystemExit, match="mix") as e:
        rd.main([str(vae), str(vib), "--out", str(tmp_path / "out")])
    assert "3 VAE-type" in str(e.value) and "3 VIB" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_no_usable_run_exits_with_a_one_line_error(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no usable run"):
        rd.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    only_unfinished = tmp_path / "unfinished"
    write_run(only_unfinished / "0", "genlab.models.VAE", 1.0, [{"recon": 90.0, "kl": 5.0}], None)
    with pytest.raises(SystemExit, match="no usable run"):
        rd.main([str(only_unfinished), "--out", str(tmp_path / "out")])
    # as a command: exit status 1 and one line (no traceback) after the folder's warning
    p = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "empty"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert p.stderr.splitlines()[-1].startswith("error: no usable run")
    assert len(p.stderr.splitlines()) == 2  # warning (no run folders) + error
