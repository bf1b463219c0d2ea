"""``python -m genlab.worker <config.yaml>``: one DDP rank > 0 of a genlab job, started by
rank 0 (``genlab.distributed``) with the job's resolved config; no Hydra, no sweep."""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import OmegaConf


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.WARNING, format="[rank %(process)d] %(message)s")
    from genlab.errors import GenlabError
    from genlab.train import train

    os.environ["GENLAB_RANK0_PID"] = str(os.getppid())  # rank 0 started this process
    cfg = OmegaConf.load(argv[0])
    try:
        train(cfg)
    except GenlabError as e:
        rank = os.environ.get("LOCAL_RANK", "?")
        print(f"genlab: {e.label}: [rank {rank}] {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main(sys.argv[1:])
