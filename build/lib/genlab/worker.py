"""``python -m genlab.worker <config.yaml>``: one DDP rank > 0 of a genlab job, started by
rank 0 (``genlab.distributed``) with the job's resolved config; no Hydra, no sweep."""

from __future__ import annotations

import logging
import sys

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="[rank %(process)d] %(message)s")
    from genlab.train import train

    cfg = OmegaConf.load(argv[0])
    train(cfg)


if __name__ == "__main__":
    main(sys.argv[1:])
