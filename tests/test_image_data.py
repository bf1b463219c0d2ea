"""Your own images (data=image_folder), CelebA through torchvision's class, and the feature
space of the scores for data without labels."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from genlab.data import CelebA, ImageFolder
from genlab.data import images as image_io
from genlab.errors import ConfigError, DataNotFoundError


def _write(path: Path, value: int, size: tuple[int, int] = (20, 24), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 2] = value  # the top half carries the value: checks the decoding
    Image.fromarray(pixels).convert(mode).save(path)


def test_class_folders_give_labels_and_decode_once(tmp_path, monkeypatch) -> None:
    for c, name in enumerate(["cat", "dog", "owl"]):
        for i in range(10):
            _write(tmp_path / "pics" / name / f"{i}.png", 40 * c + i)
    (tmp_path / "pics" / "notes.txt").parent.mkdir(exist_ok=True)
    (tmp_path / "pics" / "cat" / "readme.txt").write_text("not an image")
    dm = ImageFolder(str(tmp_path / "pics"), size=16, channels=1)
    assert dm.num_classes == 3 and dm.classes == ["cat", "dog", "owl"]
    assert dm.data_shape == (1, 16, 16)
    dm.setup()
    sizes = {k: v[0].shape[0] for k, v in dm.splits.items()}
    assert sizes == {"train": 24, "val": 3, "test": 3}
    x = torch.cat([v[0] for v in dm.splits.values()])
    y = torch.cat([v[1] for v in dm.splits.values()])
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 16, 16)
    assert sorted(y.tolist()) == sorted([0] * 10 + [1] * 10 + [2] * 10)
    # files are listed class by class; a split's first images are a random sample
    assert len(set(dm.splits["train"][1][:8].tolist())) == 3
    # the top rows hold the written value (grey of a uniform RGB value is the value)
    assert set(x[:, 0, :4].flatten().tolist()) <= {40 * c + i for c in range(3) for i in range(10)}
    caches = list((tmp_path / "pics" / ".genlab-cache").glob("*.pt"))
    assert len(caches) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(image_io, "decode_all", no_decoding)
    monkeypatch.setattr("genlab.data.folder.decode_all", no_decoding)
    again = ImageFolder(str(tmp_path / "pics"), size=16, channels=1)
    again.setup()
    assert torch.equal(again.splits["train"][0], dm.splits["train"][0])
    # a cache file broken between runs (truncated) or holding another key: decoded again
    good = caches[0].read_bytes()
    for broken in (good[:100], torch.save.__name__.encode()):
        caches[0].write_bytes(broken)
        with pytest.raises(AssertionError, match="decoded again"):
            ImageFolder(str(tmp_path / "pics"), size=16, channels=1).setup()
    record = torch.load(io.BytesIO(good), weights_only=True)
    record["key"] = {"name": "another.pt"}
    torch.save(record, caches[0])
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(str(tmp_path / "pics"), size=16, channels=1).setup()
    caches[0].write_bytes(good)
    # another file: another cache key, decoded again
    _write(tmp_path / "pics" / "owl" / "new.png", 1)
    with pytest.raises(AssertionError, match="decoded again"):
        ImageFolder(str(tmp_path / "pics"), size=16, channels=1).setup()


def test_flat_folder_no_labels_split_folders_and_read_only_cache(tmp_path, monkeypatch) -> None:
    for i in range(12):
        _write(tmp_path / "flat" / f"{i:02d}.jpg", i, size=(30, 40))
    dm = ImageFolder(str(tmp_path / "flat"), size=8, val_fraction=0.25, test_fraction=0.25)
    assert dm.num_classes == 0
    dm.setup()
    assert {k: v[0].shape for k, v in dm.splits.items()} == {
        "train": (6, 3, 8, 8),
        "val": (3, 3, 8, 8),
        "test": (3, 3, 8, 8),
    }
    for split, n in (("train", 8), ("test", 4)):
        for c in ("a", "b"):
            for i in range(n // 2):
                _write(tmp_path / "split" / split / c / f"{i}.png", i)
    os.chmod(tmp_path / "split", 0o555)  # read-only: the cache goes to XDG_CACHE_HOME
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    try:
        dm = ImageFolder(str(tmp_path / "split"), size=8, val_fraction=0.25)
        assert dm.num_classes == 2
        dm.setup()
    finally:
        os.chmod(tmp_path / "split", 0o755)
    assert {k: v[0].shape[0] for k, v in dm.splits.items()} == {"train": 6, "val": 2, "test": 4}
    if os.geteuid() != 0:  # root writes anywhere
        assert list((tmp_path / "xdg" / "genlab").rglob("*.pt"))


def test_image_folder_bad_inputs_one_line(tmp_path) -> None:
    with pytest.raises(DataNotFoundError, match="does not exist"):
        ImageFolder(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="has no images"):
        _ = ImageFolder(str(tmp_path / "empty")).num_classes
    _write(tmp_path / "mixed" / "top.png", 1)
    _write(tmp_path / "mixed" / "sub" / "x.png", 2)
    with pytest.raises(ConfigError, match="at the top and in the sub-folders"):
        _ = ImageFolder(str(tmp_path / "mixed")).num_classes
    for i in range(4):
        _write(tmp_path / "bad" / f"{i}.png", i)
    (tmp_path / "bad" / "9.png").write_bytes(b"not a png")
    with pytest.raises(DataNotFoundError, match=r"cannot read the image .*9\.png"):
        ImageFolder(str(tmp_path / "bad"), cache=False).setup()
    with pytest.raises(ConfigError, match="leaves no training images"):
        ImageFolder(str(tmp_path / "bad"), val_fraction=0.5, test_fraction=0.5)


def _fake_celeba(root: Path, n: int = 9) -> list[str]:
    """A CelebA folder in torchvision's layout (random 178 x 218 faces, annotations)."""
    base = root / "celeba"
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        _write(base / "img_align_celeba" / name, 20 * i, size=(178, 218))
    attrs = ["Male", "Smiling"]
    (base / "list_eval_partition.txt").write_text(
        "".join(f"{m} {i % 3}\n" for i, m in enumerate(names))
    )
    (base / "identity_CelebA.txt").write_text("".join(f"{m} {i}\n" for i, m in enumerate(names)))
    (base / "list_attr_celeba.txt").write_text(
        f"{n}\n{' '.join(attrs)}\n"
        + "".join(f"{m} {1 if i % 2 else -1} 1\n" for i, m in enumerate(names))
    )
    (base / "list_bbox_celeba.txt").write_text(
        f"{n}\nimage_id x_1 y_1 width height\n" + "".join(f"{m} 1 2 3 4\n" for m in names)
    )
    marks = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y"
    (base / "list_landmarks_align_celeba.txt").write_text(
        f"{n}\n{marks}\n" + "".join(f"{m} 1 2 3 4 5 6\n" for m in names)
    )
    return names


def test_celeba_through_torchvision(tmp_path, monkeypatch) -> None:
    _fake_celeba(tmp_path)
    # torchvision checks the annotation files' MD5s against the real ones
    monkeypatch.setattr(torchvision.datasets.CelebA, "_check_integrity", lambda self: True)
    dm = CelebA(str(tmp_path), download=False, size=16, crop=140, label="Male")
    assert dm.num_classes == 2 and dm.data_shape == (3, 16, 16)
    dm.setup()
    assert {k: v[0].shape for k, v in dm.splits.items()} == {
        k: (3, 3, 16, 16) for k in ("train", "val", "test")
    }
    assert dm.splits["train"][1].tolist() == [0, 1, 0]  # images 1, 4, 7: Male -1, 1, -1
    assert list((tmp_path / "celeba" / ".genlab-cache").glob("16px-crop140-n9.pt"))
    with pytest.raises(ConfigError, match="not a CelebA attribute: choose one of Male, Smiling"):
        CelebA(str(tmp_path), download=False, size=16, label="Bald").setup()
    assert CelebA(str(tmp_path), download=False, size=16).num_classes == 0


def test_celeba_missing_or_failed_download_says_what_to_fetch(tmp_path, monkeypatch) -> None:
    with pytest.raises(DataNotFoundError, match=r"data.download=false: download img_align_celeba"):
        CelebA(str(tmp_path), download=False).prepare_data()

    def quota(self):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    monkeypatch.setattr(torchvision.datasets.CelebA, "download", quota)
    with pytest.raises(DataNotFoundError, match=r"download \(Google Drive\) failed .*Too many"):
        CelebA(str(tmp_path), download=True).prepare_data()


def test_scores_without_labels_are_named_by_their_feature_space(make_cfg, tmp_path) -> None:
    """A flat folder has no labels: FID / KID in the auto-encoder's features, named
    fid_ae / kid_ae (the checkpoint monitor follows), no label-based scores."""
    from genlab.train import train

    for i in range(60):
        _write(tmp_path / "flat" / f"{i:02d}.png", 4 * i, size=(12, 12), mode="L")
    cfg = make_cfg(
        "data=image_folder",
        f"data.path={tmp_path / 'flat'}",
        "data.size=8",
        "data.channels=1",
        "model=vae",
        "model.monitor=val/fid",
        "trainer.max_epochs=1",
        "metrics.every_n_epochs=1",
        "metrics.n_test=12",
    )
    metrics, objs = train(cfg)
    assert cfg.metrics.features == "autoencoder"
    assert objs["trainer"].checkpoint_callback.monitor == "val/fid_ae"
    assert {"val/fid_ae", "val/kid_ae", "test/fid_ae", "test/kid_ae"} <= set(metrics)
    assert {"test/precision_ae", "test/coverage_ae", "test/feature_net_mse"} <= set(metrics)
    assert not {k for k in metrics if k.endswith(("/fid", "/kid", "recon_acc", "probe_acc"))}
    path = next(Path(cfg.metrics.cache_dir).glob("imagefolder-flat-8px1c-*_ae-*.pt"))
    record = torch.load(path, weights_only=True)
    assert record["kind"] == "autoencoder" and record["test_mse"] < 0.1
    assert metrics["test/feature_net_mse"] == pytest.approx(record["test_mse"])
    cfg.metrics.features = "classifier"
    with pytest.raises(ConfigError, match="needs class labels"):
        train(cfg)


def test_device_line_names_the_gpu_or_why_not(monkeypatch) -> None:
    from types import SimpleNamespace

    from genlab.train import device_line

    def fake(device: str, n: int = 1):
        strategy = SimpleNamespace(root_device=torch.device(device))
        return SimpleNamespace(strategy=strategy, num_devices=n, num_nodes=1, precision="32-true")

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100")
    assert device_line(fake("cuda:0"), "auto") == (
        "Device: GPU NVIDIA H100 (cuda:0), precision 32-true"
    )
    assert "2 GPUs" in device_line(fake("cuda:0", 2), "auto")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert "(no GPU found)" in device_line(fake("cpu"), "auto")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert "(trainer.accelerator=cpu; 2 GPU(s) unused)" in device_line(fake("cpu"), "cpu")


def test_16_bit_and_rotated_images_decode_as_meant(tmp_path) -> None:
    from genlab.data.images import decode_one

    grey16 = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 256).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "deep.png")  # a 16-bit PNG
    x = decode_one(tmp_path / "deep.png", 16, 1)
    assert x.max() >= 250 and abs(float(np.median(x)) - 128) < 4  # scaled, not clipped at 255
    # a photo stored sideways with an EXIF orientation tag: decoded upright
    pixels = np.zeros((20, 10, 3), dtype=np.uint8)
    pixels[:, :5] = 255  # left half white as stored
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "photo.jpg", exif=exif)
    upright = decode_one(tmp_path / "photo.jpg", 10, 1)
    assert upright[:3].mean() > 200 and upright[-3:].mean() < 50  # white on top once rotated
