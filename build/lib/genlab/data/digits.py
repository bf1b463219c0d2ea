"""scikit-learn's bundled 8x8 handwritten digits: the no-download default data set."""

from __future__ import annotations

import torch
from torch import Tensor

from genlab.checks import PositiveInt, Seed
from genlab.data.base import Binarize, InMemoryDataModule


class Digits(InMemoryDataModule):
    """1,797 grey 8x8 digits (values 0..16 rescaled to uint8 0..255), 10 classes.

    A fixed seeded 80/10/10 split: 1439 train / 179 val / 179 test. Small enough that a
    whole training run takes seconds on a CPU: the default for smoke runs and tests.
    """

    data_shape = (1, 8, 8)
    num_classes = 10

    def __init__(
        self,
        batch_size: PositiveInt = 128,
        eval_batch_size: PositiveInt = 512,
        binarize: Binarize = None,
        split_seed: Seed = 0,
        shuffle_seed: Seed = 0,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, binarize, split_seed, shuffle_seed)

    def load(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

        d = load_digits()
        x = torch.from_numpy(d.images).float().mul(255 / 16).round().to(torch.uint8)
        x = x.unsqueeze(1)  # (1797, 1, 8, 8)
        y = torch.from_numpy(d.target).long()
        n = x.shape[0]
        n_eval = n // 10  # 179 each for val and test
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        parts = {
            "train": perm[2 * n_eval :],
            "val": perm[:n_eval],
            "test": perm[n_eval : 2 * n_eval],
        }
        return {k: (x[i.sort().values], y[i.sort().values]) for k, i in parts.items()}
