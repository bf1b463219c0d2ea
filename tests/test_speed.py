"""Speed settings (issue 17): what they switch on, and that they change no numbers."""

from __future__ import annotations

import pytest
import torch

from genlab.metrics import sample_chunks
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


def test_iwae_chunks_cover_the_samples_and_grow_to_the_free_gpu_memory(monkeypatch) -> None:
    cpu = torch.device("cpu")
    assert list(sample_chunks(1000, 100, cpu, rows=3000)) == [30] * 33 + [10]
    assert list(sample_chunks(1000, 100, cpu)) == [163] * 6 + [22]  # DEFAULT_ROWS = 16384
    # On a GPU the first chunk measures its peak bytes per row; the next chunks fill half
    # the free memory: 1 kB per row, 1 GB free -> 500,000 rows = 5,000 samples of 100.
    peak = {}
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: peak.clear())
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 10_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: peak["bytes"])
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (10**9, 2 * 10**9))
    sizes = []
    for c in sample_chunks(20_000, 100, torch.device("cuda")):
        peak["bytes"] = 10_000 + 1000 * c * 100  # what evaluating c x 100 rows allocated
        sizes.append(c)
    assert sizes == [163, 5000, 5000, 5000, 4837]
    # A fixed setting is kept on a GPU too.
    assert list(sample_chunks(1000, 100, torch.device("cuda"), rows=50_000)) == [500, 500]
