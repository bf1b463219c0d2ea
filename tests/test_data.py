"""Data modules: fixed splits, uint8 tensors batched by index, device transforms, clear errors."""

from __future__ import annotations

import hashlib
from urllib.error import URLError

import pytest
import torch
from conftest import DATA_DIR, needs_mnist

from genlab.data import MNIST, Digits, FashionMNIST, TensorBatches
from genlab.data.transforms import binarize, dequantize, to_symmetric, to_unit
from genlab.errors import ConfigError, DataNotFoundError


def _digest(x: torch.Tensor) -> str:
    return hashlib.md5(x.cpu().numpy().tobytes()).hexdigest()


def test_digits_fixed_80_10_10_split() -> None:
    a, b = Digits(), Digits()
    a.setup(), b.setup()
    sizes = {k: v[0].shape[0] for k, v in a.splits.items()}
    assert sizes == {"train": 1439, "val": 179, "test": 179}
    for k in a.splits:  # same seed, same split
        assert _digest(a.splits[k][0]) == _digest(b.splits[k][0])
        x, y = a.splits[k]
        assert x.dtype == torch.uint8 and x.shape[1:] == (1, 8, 8) and y.dtype == torch.long
    assert int(a.splits["train"][0].max()) == 255 and set(a.splits["test"][1].tolist()) == set(
        range(10)
    )
    c = Digits(split_seed=1)
    c.setup()
    assert _digest(c.splits["val"][0]) != _digest(a.splits["val"][0])


@needs_mnist
@pytest.mark.parametrize("cls", [MNIST, FashionMNIST])
def test_mnist_like_50k_10k_10k(cls) -> None:
    dm = cls(data_dir=str(DATA_DIR), download=False)
    dm.prepare_data()
    dm.setup()
    (xt, yt), (xv, yv), (xs, ys) = (dm.splits[k] for k in ("train", "val", "test"))
    assert (xt.shape[0], xv.shape[0], xs.shape[0]) == (50000, 10000, 10000)
    assert xt.dtype == torch.uint8 and xt.shape[1:] == dm.data_shape == (1, 28, 28)
    # The split partitions the official train set: pixel sums add up.
    full = xt.double().sum() + xv.double().sum()
    assert abs(full / 60000 / 784 - 33.318) < 0.01 if cls is MNIST else full > 0
    assert torch.bincount(ys, minlength=10).tolist() == (
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009] if cls is MNIST else [1000] * 10
    )
    again = cls(data_dir=str(DATA_DIR), download=False)
    again.setup()
    assert _digest(again.splits["val"][0]) == _digest(xv)


def test_batches_cover_each_example_once_per_epoch() -> None:
    x = torch.arange(103, dtype=torch.uint8)
    y = torch.arange(103)
    epoch = {"e": 0}
    loader = TensorBatches(x, y, batch_size=10, shuffle=True, seed=7, epoch_fn=lambda: epoch["e"])
    assert len(loader) == 11
    first = torch.cat([b[1] for b in loader])
    again = torch.cat([b[1] for b in loader])
    epoch["e"] = 1
    second = torch.cat([b[1] for b in loader])
    assert sorted(first.tolist()) == list(range(103)) == sorted(second.tolist())
    assert torch.equal(first, again) and not torch.equal(first, second)  # seeded by epoch
    # Unshuffled: in order, x and y aligned.
    xs, ys, idx = zip(*TensorBatches(x, y, batch_size=50), strict=True)
    assert torch.equal(torch.cat(ys), y) and torch.equal(torch.cat(xs).long(), y)
    assert torch.equal(torch.cat(idx), y)  # the rows of the split, for per-example codes
    # Two ranks, shuffled (training): equal lengths, together they cover everything.
    r0, r1 = (
        torch.cat([b[1] for b in TensorBatches(x, y, 10, True, rank=r, world_size=2)])
        for r in (0, 1)
    )
    assert len(r0) == len(r1) == 52 and set(r0.tolist()) | set(r1.tolist()) == set(range(103))
    # Evaluation (unshuffled): the one-process batches dealt out whole (0, 2, ... to rank
    # 0), every rank as many steps; the rank short of a batch repeats its last one marked
    # idx = -1 (weighed 0), so each example counts exactly once.
    ranks = [list(TensorBatches(x, y, 10, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(b) for b in ranks] == [6, 6]
    one = list(TensorBatches(x, y, 10))
    for k, batch in enumerate(one):
        shard = ranks[k % 2][k // 2]
        assert torch.equal(shard[1], batch[1]) and torch.equal(shard[2], batch[2])
    pad = ranks[1][-1]
    assert (pad[2] == -1).all() and len(pad[1]) == 10
    counted = torch.cat([b[2] for r in ranks for b in r])
    assert sorted(counted[counted >= 0].tolist()) == list(range(103))
    # More ranks than batches: the idle rank runs one padding step.
    idle = list(TensorBatches(x[:5], y[:5], 10, rank=1, world_size=2))
    assert len(idle) == 1 and (idle[0][2] == -1).all()


def test_transforms() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    values = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.equal(to_unit(values), torch.tensor([0.0, 128 / 255, 1.0]))
    assert torch.allclose(to_symmetric(x), to_unit(x) * 2 - 1, atol=1e-6)
    b = binarize(x, torch.Generator().manual_seed(1))
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert not binarize(torch.zeros_like(x)).any() and binarize(torch.full_like(x, 255)).all()
    # E[binarize(x)] = x / 255; the mean over 50k pixels is within a few standard errors.
    assert abs(b.mean() - to_unit(x).mean()) < 0.01
    assert torch.equal(binarize(x, torch.Generator().manual_seed(1)), b)  # seeded: reproducible
    d = dequantize(x, torch.Generator().manual_seed(2))
    assert torch.equal((d * 256).floor().to(torch.uint8), x)  # noise stays inside each bin
    full = torch.full((3, 1, 2, 2), 255, dtype=torch.uint8)
    assert torch.equal(binarize(full), torch.ones(3, 1, 2, 2))  # binary data passes unchanged


def test_static_and_threshold_binarisation() -> None:
    s1, s2, t = Digits(binarize="static"), Digits(binarize="static"), Digits(binarize="threshold")
    for dm in (s1, s2, t):
        dm.setup()
    x = s1.splits["train"][0]
    assert set(x.unique().tolist()) == {0, 255}
    assert torch.equal(x, s2.splits["train"][0])  # one fixed draw
    grey = Digits()
    grey.setup()
    assert torch.equal(t.splits["test"][0], (grey.splits["test"][0] >= 128).to(torch.uint8) * 255)
    # static draws are unbiased: mean intensity matches the grey data
    assert abs(x.float().mean() - grey.splits["train"][0].float().mean()) < 2.0


def test_missing_files_one_clear_error(tmp_path) -> None:
    dm = MNIST(data_dir=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "MNIST" / "raw") in msg
    assert "data.download=false" in msg and "GENLAB_DATA" in msg


def test_failed_download_one_clear_error(tmp_path, monkeypatch, caplog) -> None:
    import logging

    import torchvision

    def offline(self, *a, **k):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    with caplog.at_level(logging.INFO), pytest.raises(DataNotFoundError) as e:
        FashionMNIST(data_dir=str(tmp_path), download=True).prepare_data()
    # before downloading: how big, where to
    said = (
        f"Downloading FashionMNIST (30.9 MB, 4 gzip files) into {tmp_path / 'FashionMNIST' / 'raw'}"
    )
    assert said in caplog.text
    msg = str(e.value)
    assert "\n" not in msg and "download failed" in msg and "no network" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg


def test_bad_sizes_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data.batch_size must be a positive integer, got 0"):
        Digits(batch_size=0)
    with pytest.raises(ConfigError, match=r"data.binarize='dynamic' is not one of"):
        Digits(binarize="dynamic")


@needs_mnist
def test_unreadable_data_files_are_one_line(tmp_path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (DATA_DIR / "MNIST" / "raw").glob("*-ubyte"):
        (raw / f.name).symlink_to(f)
    bad = raw / "train-images-idx3-ubyte"
    data = bad.read_bytes()[:100_000]
    bad.unlink()
    bad.write_bytes(data)  # a download cut short
    with pytest.raises(DataNotFoundError, match=r"MNIST files in .* are unreadable") as e:
        MNIST(data_dir=str(tmp_path), download=False).setup()
    assert "\n" not in str(e.value)
