"""Speed settings (issue 17): what they switch on, and that they change no numbers."""

from __future__ import annotations

import pytest
import torch

from genlab.train import train


@pytest.mark.parametrize(
    "overrides,expected",
    [([], True), (["trainer.deterministic=true"], False), (["trainer.benchmark=false"], False)],
)
def test_cudnn_autotuner_is_on_unless_deterministic(make_cfg, overrides, expected) -> None:
    torch.backends.cudnn.benchmark = not expected
    cfg = make_cfg("data=digits", "model=ae", "trainer.fast_dev_run=true", "test=false", *overrides)
    train(cfg)
    assert torch.backends.cudnn.benchmark is expected
