"""genlab-report: one table and figures across runs, recomputed here from the runs' files;
experiments/README.md's overview is the generator's output."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import DATA_DIR, REPO, csv_rows, needs_mnist

from genlab.report import BEGIN, END, find_runs, report, write_block
from genlab.train import train


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multirun-like folder with two tiny VAE runs on digits (latent 16 and 4)."""
    from conftest import compose_cfg

    root = tmp_path_factory.mktemp("multirun")
    for job, latent in enumerate([16, 4]):
        out = root / str(job)
        cfg = compose_cfg(
            ["trainer=cpu", "logger=csv", "model=vae", f"model.latent_dim={latent}",
             "trainer.max_epochs=2", "model.iwae_samples=8", "metrics.n_test=100",
             "callbacks.image_grids.every_n_epochs=1"]
            + (["metrics.fid_bootstrap=5"] if job else []),
            out,
        )  # fmt: skip
        (out / ".hydra").mkdir(parents=True)
        from omegaconf import OmegaConf

        OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # what Hydra writes in a run
        train(cfg)
    return root


def test_report_of_two_runs(two_runs: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Mine\n\nintro\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    records = report([two_runs], tmp_path / "rep", readme=readme)
    assert [r["run"] for r in records] == ["0", "1"]
    with open(tmp_path / "rep" / "report.csv") as f:
        table = list(csv.DictReader(f))
    for job, row in zip(("0", "1"), table, strict=True):
        rows = csv_rows(two_runs / job)
        nll = [float(r["test/nll_iwae"]) for r in rows if r.get("test/nll_iwae")]
        fid = [float(r["test/fid"]) for r in rows if r.get("test/fid")]
        assert float(row["test/nll_iwae"]) == pytest.approx(nll[-1])
        assert float(row["fid"]) == pytest.approx(fid[-1])
        # the second run asked for the FID's bootstrap standard error (5 resamples)
        se = [float(r["test/fid_se"]) for r in rows if r.get("test/fid_se")]
        assert (len(se) == 1 and 0 < se[0] < fid[-1]) if job == "1" else not se, se
        for key in ("precision", "recall", "density", "coverage"):  # beside FID / KID
            logged = [float(r[f"test/{key}"]) for r in rows if r.get(f"test/{key}")]
            assert float(row[key]) == pytest.approx(logged[-1]), key
        assert row["family"] == "VAE" and row["data"] == "Digits" and row["split"] == "test"
        assert int(row["epochs"]) == 2 and float(row["seconds"]) > 0
    assert table[0]["settings"] == "iwae_samples=8" and "latent_dim=4" in table[1]["settings"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| NLL (IWAE) (nats) |" in md and "FID (classifier features)" in md
    assert "| prec. (classifier) | recall (classifier) | density (classifier) |" in md
    for name in ("samples.png", "fid.png", "curves_val_elbo.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000, name
        assert f"({name})" in md
    text = readme.read_text()
    assert text.startswith("# Mine\n\nintro\n\n") and text.endswith(f"{END}\n\nafter\n")
    assert "old table" not in text and "| [0](" in text


def test_report_bad_inputs(tmp_path: Path, capsys) -> None:
    from genlab.report import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert "no runs under" in capsys.readouterr().err


def test_experiments_readme_is_the_generators_output(tmp_path: Path) -> None:
    """The overview table in experiments/README.md is what genlab-report writes from the
    committed experiment folders (regenerate: genlab-report experiments --no-plots
    --out <tmp> --readme experiments/README.md)."""
    committed = REPO / "experiments" / "README.md"
    copy = tmp_path / "experiments"
    shutil.copytree(REPO / "experiments", copy, ignore=shutil.ignore_patterns("*.png"))
    report([copy], readme=copy / "README.md")
    assert (copy / "README.md").read_text() == committed.read_text()
    assert len(find_runs([REPO / "experiments"])) >= 20


def test_write_block_appends_markers_when_missing(tmp_path: Path) -> None:
    path = tmp_path / "R.md"
    path.write_text("hello\n")
    write_block(path, "T\n")
    write_block(path, "U\n")
    assert path.read_text() == f"hello\n\n{BEGIN}\nU\n{END}\n"


def test_unreadable_runs_are_skipped_and_named(two_runs: Path, tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(two_runs / "0", runs / "good")
    bad = runs / "bad"
    (bad / ".hydra").mkdir(parents=True)
    (bad / ".hydra" / "config.yaml").write_text("model: [unclosed\n")
    (bad / "csv").mkdir()
    (bad / "csv" / "metrics.csv").write_text("epoch,step\n0,1\n")
    records = report([runs], tmp_path / "rep", plots=False)
    assert [r["run"] for r in records] == ["good"]
    assert "skipped" in capsys.readouterr().err
    assert (
        "Not in the table (no config, or unreadable): ../runs/bad."
        in (tmp_path / "rep" / "report.md").read_text()
    )


def test_reproduction_table_reads_values_from_the_runs(tmp_path: Path) -> None:
    """reproduction.yaml rows become one table beside the overview: the paper's value and
    genlab's, read from the run's metrics (not typed), in the metric's format; a
    malformed file is one ValueError naming it."""
    from genlab.report import report, reproduction

    exp = tmp_path / "exp" / "vib_like"
    exp.mkdir(parents=True)
    (exp / "config_a.yaml").write_text(
        "model:\n  _target_: genlab.models.VIB\ndata:\n  _target_: genlab.data.MNIST\n"
    )
    rows = "epoch,step,test/error_avg,train/loss\n4,10,,0.3\n5,12,0.0124,\n"
    (exp / "metrics_a.csv").write_text(rows)
    (exp / "ckpt.bin").write_bytes(b"weights")
    (exp / "reproduction.yaml").write_text(
        "- run: a\n  metric: test/error_avg\n  protocol: 12 draws\n  paper: 0.0113\n"
        "  source: Alemi et al. 2017\n  differs: 5 of 200 epochs\n  command: python train.py x\n"
        "  checkpoint: ckpt.bin\n  curve: curve.png\n"
    )
    readme = tmp_path / "README.md"
    readme.write_text("# experiments\n")
    report([tmp_path / "exp"], None, readme, plots=False)
    text = readme.read_text()
    block = text[text.index(reproduction.BEGIN) : text.index(reproduction.END)]
    row = next(line for line in block.splitlines() if line.startswith("| VIB"))
    assert "| 1.13% |" in row and "| 1.24% |" in row and "5 of 200 epochs" in row, row
    assert "5 of 200 epochs ([learning curve](vib_like/curve.png))" in row, row
    # every family genlab ships, bar the VIB, is listed as still without a row
    head = "Families without a row in this table yet:"
    line = next(x for x in block.splitlines() if x.startswith(head))
    missing = line.split(":", 1)[1].strip(" .").split(", ")
    assert "VIB" not in missing and {"VAE", "RBM", "DDPM", "NICE"} <= set(missing), line
    assert sorted(missing + ["VIB"]) == reproduction.families()
    digest = hashlib.sha256(b"weights").hexdigest()[:12]
    assert row.rstrip(" |").endswith(f"ckpt.bin ({digest})"), row
    # a recorded digest: the same cell without the file, a flagged one for other weights
    (exp / "reproduction.yaml").write_text(
        (exp / "reproduction.yaml").read_text() + f"  sha256: {digest}\n"
    )
    (exp / "ckpt.bin").unlink()
    assert reproduction.checkpoint_cell(exp, "ckpt.bin", digest) == f"ckpt.bin ({digest})"
    (exp / "ckpt.bin").write_bytes(b"other weights")
    assert "not the row's weights" in reproduction.checkpoint_cell(exp, "ckpt.bin", digest)
    (exp / "reproduction.yaml").write_text("- run: a\n  metric: test/error_avg\n")
    with pytest.raises(ValueError, match="reproduction.yaml: row 1 has no protocol, paper, source"):
        report([tmp_path / "exp"], None, readme, plots=False)


def test_check_checkpoints_flags_each_rows_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    """``genlab-report --check-checkpoints``: a row's file found beside its folder or
    under the working directory (run folders) is hashed against the recorded digest;
    mismatch exits 1, missing files and rows without a checkpoint are listed."""
    from genlab.report import main

    exp = tmp_path / "experiments" / "fam"
    exp.mkdir(parents=True)
    run = tmp_path / "outputs" / "r1" / "checkpoints"
    run.mkdir(parents=True)
    (run / "best.ckpt").write_bytes(b"weights")
    (exp / "local.ckpt").write_bytes(b"local")
    good = hashlib.sha256(b"weights").hexdigest()[:12]
    local = hashlib.sha256(b"local").hexdigest()[:12]
    row = "- run: {}\n  metric: test/m\n  protocol: p\n  paper: 1\n  source: s\n"
    rows = [
        row.format("a") + f"  checkpoint: outputs/r1/checkpoints/best.ckpt\n  sha256: {good}\n",
        row.format("b") + f"  checkpoint: local.ckpt\n  sha256: {local}\n",
        row.format("c") + "  checkpoint: outputs/gone/best.ckpt\n  sha256: 0123456789ab\n",
        row.format("d"),
        row.format("e") + "  checkpoint: local.ckpt\n",
    ]
    (exp / "reproduction.yaml").write_text("".join(rows))
    monkeypatch.chdir(tmp_path)

    def check() -> tuple[int, dict[str, str]]:
        with pytest.raises(SystemExit) as exit_:
            main(["experiments", "--check-checkpoints"])
        lines = capsys.readouterr().out.splitlines()
        status = {line.split()[0].split("/")[-1]: line.split()[2] for line in lines[:-1]}
        return exit_.value.code, status

    code, status = check()
    assert code == 0 and status == dict(a="ok", b="ok", c="missing", d="none", e="unrecorded")
    (run / "best.ckpt").write_bytes(b"other weights")
    code, status = check()
    assert code == 1 and status["a"] == "MISMATCH", status
    assert not (tmp_path / "report").exists()  # the check writes nothing


def test_the_table_shows_each_estimates_logged_spread(tmp_path: Path) -> None:
    """genlab's cell carries the spread its run logged: `± s.e.` from `<metric>_se`, and
    an AIS log-likelihood's bracket from log Z's (loglik = -F - log Z moves against it);
    a run without either shows the bare value."""
    from genlab.report.reproduction import value_cell
    from genlab.report.runs import Run

    def run_with(columns: dict[str, float]) -> Run:
        row = {"epoch": "3", "step": "9", **{k: str(v) for k, v in columns.items()}}
        return Run("r", tmp_path, {}, [row])

    # log Z = 400 in [399.5, 401]: loglik -87 in [-87 - 1, -87 + 0.5]
    ais = run_with({"test/loglik": -87.0, "test/log_z": 400.0, "test/log_z_lo": 399.5,
                    "test/log_z_hi": 401.0})  # fmt: skip
    assert value_cell(ais, "test/loglik") == "-87.00 [-88.00, -86.50]"
    nll = run_with({"test/nll_iwae": 85.1234, "test/nll_iwae_se": 0.1234})
    assert value_cell(nll, "test/nll_iwae") == "85.12 ± 0.12"
    assert value_cell(nll, "test/elbo") == "(not logged)"
    raise_ = run_with({"test/loglik_raise": -87.1206, "test/loglik_raise_se": 0.24871})
    assert value_cell(raise_, "test/loglik_raise") == "-87.12 ± 0.25"  # loglik's format
    parzen = run_with({"test/parzen_loglik": 289.93216, "test/parzen_loglik_se": 1.5438})
    assert value_cell(parzen, "test/parzen_loglik") == "289.93 ± 1.54"
    assert value_cell(ais, "test/log_z") == "400"  # only a loglik takes the bracket
    fid = run_with({"test/fid_inception": 49.6606, "test/fid_inception_se": 0.900513})
    assert value_cell(fid, "test/fid_inception") == "49.66 ± 0.90"  # the value's decimals


def test_a_rows_checkpoint_reproduces_its_number_with_genlab_eval(make_cfg, tmp_path) -> None:
    """One cheap row end to end: a digits VAE trained here, its row in reproduction.yaml
    with its best.ckpt, the table lists the checkpoint's digest, and genlab-eval on that
    checkpoint gives the row's number again (the tested checkpoint is best.ckpt)."""
    from omegaconf import OmegaConf

    from genlab.evaluate import evaluate
    from genlab.report import report, reproduction
    from genlab.train import train

    run = tmp_path / "exp" / "vae_digits"
    cfg = make_cfg("trainer.max_epochs=2", "metrics.every_n_epochs=0", output_dir=run)
    metrics, _ = train(cfg)
    (run / ".hydra").mkdir()
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    (run / "config.yaml").write_text((run / ".hydra" / "config.yaml").read_text())
    (run / "metrics.csv").write_text((run / "csv" / "metrics.csv").read_text())
    (run / "reproduction.yaml").write_text(
        "- metric: test/elbo\n  protocol: digits, 2 epochs\n  paper: -30.0\n  source: none\n"
        "  checkpoint: checkpoints/best.ckpt\n"
    )
    readme = tmp_path / "README.md"
    report([tmp_path / "exp"], None, readme, plots=False)
    text = readme.read_text()
    digest = reproduction.file_digest(run / "checkpoints" / "best.ckpt")
    assert f"best.ckpt ({digest})" in text[text.index(reproduction.BEGIN) :]
    again = evaluate(run / "checkpoints" / "best.ckpt", ["model.iwae_samples=16"])
    assert again["metrics"]["test/elbo"] == pytest.approx(metrics["test/elbo"], rel=1e-5)


@needs_mnist
def test_the_committed_linear_ae_row_is_reproduced_by_genlab_eval(tmp_path: Path) -> None:
    """The reproducibility table's AE row keeps its checkpoint in git: the file is the one
    the row's digest names, and genlab-eval on it (a copy of the run folder, so nothing is
    written into the repository) gives the row's test/recon again."""
    import yaml

    from genlab.evaluate import evaluate
    from genlab.report import reproduction

    folder = REPO / "experiments" / "ae_linear_mnist"
    (row,) = yaml.safe_load((folder / "reproduction.yaml").read_text())
    assert reproduction.file_digest(folder / row["checkpoint"]) == row["sha256"]
    with open(folder / "metrics.csv") as f:
        logged = next(float(r["test/recon"]) for r in csv.DictReader(f) if r.get("test/recon"))
    run = tmp_path / "run"
    shutil.copytree(folder / ".hydra", run / ".hydra")
    shutil.copytree(folder / "checkpoints", run / "checkpoints")
    again = evaluate(
        run / row["checkpoint"], ["callbacks.sample_scores=null", f"paths.data_dir={DATA_DIR}"]
    )
    assert again["metrics"][row["metric"]] == pytest.approx(logged, rel=1e-5)
    assert "test/fid" not in again["metrics"]  # sample_scores=null: no feature network
    assert abs(logged - row["paper"]) < 0.1  # the linear AE reaches PCA's optimum


@needs_mnist
def test_verify_rows_recomputes_a_row_from_its_checkpoint(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """scripts/verify_rows.py runs eval.py on a row's checkpoint in a fresh process and
    finds the table's number again; a row whose recorded digest is not the file's is not
    evaluated; nothing is left in the experiment folder."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("verify", REPO / "scripts" / "verify_rows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.agrees(13.9094, 13.9094 + 1e-5, None) and not mod.agrees(13.9, 13.95, None)
    assert mod.agrees(89.70, 89.72, 0.25) and not mod.agrees(89.70, 89.75, 0.25)

    source = REPO / "experiments" / "ae_linear_mnist"
    exp = tmp_path / "experiments" / "ae"
    for name in (".hydra", "checkpoints"):
        shutil.copytree(source / name, exp / name)
    for name in ("config.yaml", "metrics.csv"):
        shutil.copyfile(source / name, exp / name)
    (row,) = yaml.safe_load((source / "reproduction.yaml").read_text())
    wrong = {**row, "sha256": "0123456789ab", "metric": "test/loss"}
    (exp / "reproduction.yaml").write_text(yaml.safe_dump([row, wrong]))
    out = tmp_path / "verify"
    argv = ["verify_rows.py", str(tmp_path / "experiments"), "--out", str(out), "--set"]
    argv += ["callbacks.sample_scores=null", f"paths.data_dir={DATA_DIR}"]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.chdir(REPO)  # eval.py and scripts/ are found from the repository root
    with pytest.raises(SystemExit) as stop:
        mod.main()
    printed = capsys.readouterr().out
    assert stop.value.code == 0, printed
    rows = [json.loads(line) for line in printed.splitlines() if line.startswith("{")]
    assert [r["metric"] for r in rows] == ["test/recon", "test/loss"]
    good = json.loads((out / "ae__test_recon.json").read_text())  # kept: a rerun skips it
    assert good == rows[0] and good["verdict"] == "agrees"
    assert good["eval"] == pytest.approx(good["table"], rel=1e-5)
    assert rows[1]["verdict"] == "checkpoint digest differs from the row's"
    assert not (exp / "checkpoints" / "eval_best").exists()


def test_learning_curve_extrapolation_recovers_a_known_power_law() -> None:
    """y = a + b t^-c fitted on a noisy curve gives back a and the epoch that reaches a
    target; a target beyond the asymptote is out of reach; a lower-is-better curve too."""
    import numpy as np

    from genlab.report.extrapolate import fit_power_law, to_target

    rng = np.random.default_rng(0)
    epochs = np.arange(50)
    loglik = -86.0 - 40.0 * (epochs + 1.0) ** -0.7 + rng.normal(0, 0.01, 50)
    fit = to_target(fit_power_law(epochs, loglik), -87.0)
    assert fit.a == pytest.approx(-86.0, abs=0.3) and fit.reachable
    assert fit.epochs_to_target == pytest.approx((1 / 40) ** (-1 / 0.7) - 1, rel=0.15)
    assert not to_target(fit_power_law(epochs, loglik), -85.0).reachable
    assert to_target(fit_power_law(epochs, loglik), -95.0).epochs_to_target is None  # done
    error = 0.01 + 0.02 * (epochs + 1.0) ** -0.5
    fit = to_target(fit_power_law(epochs, error), 0.012)
    assert fit.epochs_to_target == pytest.approx(99.0, rel=0.05) and fit.reachable
    # a curve flattened by a decaying learning rate is no power law: no epoch count
    flat = np.minimum(1900.0, 2000.0 - 3000.0 * (epochs + 1.0) ** -0.9)
    fit = to_target(fit_power_law(epochs, flat), 1980.0)
    assert fit.epochs_to_target is None and fit.note
    with pytest.raises(ValueError, match="need 4"):
        fit_power_law([0, 1, 2], [1.0, 0.5, 0.3])


def test_keep_run_copies_a_run_with_its_evaluations(tmp_path: Path) -> None:
    """scripts/keep_run.py: the run's config and metrics under the tag, an eval.py record
    appended as the last row (so the table reads the evaluated number), the checkpoint's
    digest and the training hours."""
    import importlib.util
    import json

    from genlab.report import reproduction

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "csv").mkdir()
    (run / "checkpoints" / "eval_exact").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "model:\n  _target_: genlab.models.DDPM\ndata:\n  _target_: genlab.data.MNIST\n"
    )
    (run / "csv" / "metrics.csv").write_text(
        "epoch,step,time/epoch_s,val/loss,test/bpd\n0,5,1800,0.5,\n1,10,1800,0.4,\n2,10,,,2.24\n"
    )
    (run / "checkpoints" / "best.ckpt").write_bytes(b"weights")
    record = {"metrics": {"test/bpd": 2.11, "test/elbo": -1200.0}}
    (run / "checkpoints" / "eval_exact" / "metrics.json").write_text(json.dumps(record))
    spec = importlib.util.spec_from_file_location("keep", REPO / "scripts" / "keep_run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kept = mod.keep(
        run, tmp_path / "exp" / "ddpm", "exact", [Path("checkpoints/eval_exact/metrics.json")]
    )
    assert kept["sha256"] == reproduction.file_digest(run / "checkpoints" / "best.ckpt")
    assert kept["train_hours"] == 1.0
    (found,) = find_runs([tmp_path / "exp"])
    assert found.name == "ddpm/exact" and found.family == "DDPM"
    assert found.last("test/bpd") == 2.11 and found.last("test/elbo") == -1200.0
    # Bad input is one error before anything is written: no run folder, a missing record.
    with pytest.raises(ValueError, match="not a genlab run folder"):
        mod.keep(tmp_path / "nope", tmp_path / "exp2")
    with pytest.raises(ValueError, match="not an eval.py metrics.json"):
        mod.keep(run, tmp_path / "exp2", "", [Path("checkpoints/eval_none/metrics.json")])
    assert not (tmp_path / "exp2").exists()
