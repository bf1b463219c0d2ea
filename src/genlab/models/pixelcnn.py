"""Gated PixelCNN (van den Oord et al. 2016, "Conditional image generation with PixelCNN
decoders"); docs/models/autoregressive.md#pixelcnn.

Masked convolutions in a vertical stack (rows above) and a horizontal stack (the row to
the left), with no blind spot, gated units and optional class conditioning, give
p(x) = prod_{i,j} p(x_ij | x_<ij) in raster order, exact in one pass:

    {split}/loglik = log p(x)            nats per image
    {split}/bpd    = -log p(x) / (D ln 2) (8-bit data: ``categorical``, ``logistic_mixture``)

Sampling draws pixel by pixel: H x W network passes, each on the window of the image that
pixel's receptive field covers, so its cost grows linearly with the number of pixels (times
the network's cost on a (r + 2) x (2 r + 1) window, r the sum of its layers' kernel
half-widths: 8 for the 7x7 + 5 x 3x3 of experiment=pixelcnn_mnist).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from genlab.checks import NonNegativeFloat, OptimizerName, PositiveFloat, PositiveInt, check_args
from genlab.errors import ConfigError
from genlab.models.autoregressive import Likelihood, PixelModel
from genlab.models.sampling import ClassConditionalSampling
from genlab.nn.autoregressive import GatedPixelCNN
from genlab.progress import Progress

CPU_SAMPLE_BATCH = 64  # images per sampling pass on a CPU (see _sample_pixels)


class PixelCNN(ClassConditionalSampling, PixelModel):
    """Gated PixelCNN over grey or colour images (sub-pixels in raster order, R -> G -> B
    within a pixel); Bernoulli, 256-way softmax or discretised logistic-mixture values;
    ``conditional``: class-conditional p(x | y)."""

    compile_nets = ("pixelcnn",)
    val_score_samples = 250  # val/fid: H x W passes per sample make a costly sampler

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 0,
        likelihood: Likelihood = "bernoulli",
        mixture_components: PositiveInt = 5,
        channels: PositiveInt = 64,
        layers: PositiveInt = 8,
        kernel: PositiveInt = 3,
        first_kernel: PositiveInt = 7,
        head_channels: PositiveInt | None = None,
        conditional: bool = False,
        lr: PositiveFloat = 1e-3,
        lr_final: PositiveFloat | None = None,
        weight_decay: NonNegativeFloat = 0.0,
        optimizer: OptimizerName = "Adam",
        optimizer_kwargs: dict | None = None,
    ) -> None:
        check_args(type(self), locals(), "model")
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.init_pixels(tuple(data_shape), likelihood, mixture_components, "pixelcnn")
        if conditional and num_classes < 2:
            raise ConfigError(
                "model.conditional=true needs labelled data (num_classes >= 2): use labelled "
                "data or model.conditional=false"
            )
        if kernel % 2 == 0 or first_kernel % 2 == 0:
            raise ConfigError(
                f"model.kernel={kernel} and model.first_kernel={first_kernel} must be odd "
                "(centred masks), e.g. 3 and 7"
            )
        if first_kernel < 3:
            # A 1x1 type-A layer sees no pixel of its own row: no output would ever
            # depend on the pixel just left of it.
            raise ConfigError(
                f"model.first_kernel={first_kernel} lets no pixel see its left neighbour: "
                "use an odd first_kernel >= 3, e.g. model.first_kernel=7"
            )
        self.pixelcnn = GatedPixelCNN(
            self.data_shape[0], self.dist.params, channels, layers, kernel, first_kernel,
            head_channels, num_classes if conditional else 0,
        )  # fmt: skip

    def net_output(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W) integer pixels -> (B, params, C, H, W)."""
        return self.pixelcnn(self.dist.to_input(x), y)

    def _sample_pixels(self, n: int, y: Tensor | None, generator: torch.Generator | None) -> Tensor:
        c, h, w = self.data_shape
        x = torch.zeros(n, *self.data_shape, device=self.device)
        # On a CPU, in batches of CPU_SAMPLE_BATCH (each pass is a small convolution whose
        # cost per image grows with the batch: 6 x 32 net, 2 cores, 1,000 images: 380-460 s
        # in batches of 64 against 640-790 s in batches of 200).
        step = CPU_SAMPLE_BATCH if self.device.type == "cpu" else n
        with Progress("PixelCNN sampling", h * w * c * -(-n // step), "sub-pixels") as p:
            for a in range(0, n, step):
                part, labels = x[a : a + step], None if y is None else y[a : a + step]
                for i in range(h):
                    for j in range(w):
                        # Only the receptive field of pixel (i, j) is passed (rows <= i).
                        rows, cols = self.pixelcnn.window(i, j, h, w)
                        for k in range(c):  # R, then G given R, then B given both
                            out = self.net_output(part[:, :, rows, cols], labels)
                            pixel = out[:, :, k, i - rows.start, j - cols.start]  # (b, P)
                            part[:, k, i, j] = self.dist.sample(pixel, generator)
                            p.update()
        return x
