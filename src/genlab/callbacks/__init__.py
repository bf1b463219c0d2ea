"""Callbacks, one file per concern:

- :mod:`~genlab.callbacks.training`: checkpoints (``BestCheckpoint``), per-epoch seeds
  (``EpochSeeder``), NaN/inf stops (``DivergenceGuard``), the progress bar, test-loop progress lines
  (``TestProgress``) and epoch timing;
- :mod:`~genlab.callbacks.images`: sample / reconstruction grids and latent views
  (``ImageGrids``, ``LatentTools``), drawn by the plain functions of
  :mod:`~genlab.callbacks.views` (which ``eval.py`` uses too);
- :mod:`~genlab.callbacks.scores`: FID / KID / precision-recall, conditional accuracy, probes
  (``SampleScores``);
- :mod:`~genlab.callbacks.curves`: learning curves on the test split (``SplitCurve``).
"""

from genlab.callbacks.curves import SplitCurve
from genlab.callbacks.images import ImageGrids, LatentTools
from genlab.callbacks.scores import SampleScores
from genlab.callbacks.training import (
    BestCheckpoint,
    DivergenceGuard,
    EpochSeeder,
    EpochTimer,
    ProgressBar,
    TestProgress,
)

__all__ = [
    "BestCheckpoint",
    "DivergenceGuard",
    "EpochSeeder",
    "EpochTimer",
    "ImageGrids",
    "LatentTools",
    "ProgressBar",
    "SampleScores",
    "SplitCurve",
    "TestProgress",
]
