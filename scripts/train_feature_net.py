"""Train (or show) the cached feature network of a data set, for FID-style scores.

    python scripts/train_feature_net.py data=mnist          # trains once, then reports the cache
    python scripts/train_feature_net.py data=fashion_mnist force=true

Shares train.py's data configs; the network goes to metrics.cache_dir/<data>-<key>.pt
(default ${paths.data_dir}/feature_nets, env GENLAB_CACHE) with its test accuracy and the
key of the images it was trained on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONF = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="feature_net")
def main(cfg: DictConfig) -> None:
    from genlab.errors import GenlabError
    from genlab.metrics.features import cache_path, get_feature_net, net_key
    from genlab.train import build

    try:
        dm = build(cfg.data, "data")
        dm.prepare_data()
        path = cache_path(cfg.metrics.cache_dir, net_key(dm, "classifier", cfg.epochs))
        if cfg.force and path.exists():
            path.unlink()
        _, record = get_feature_net(dm, cfg.metrics.cache_dir, epochs=cfg.epochs)
    except GenlabError as e:
        print(f"genlab: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{record['data']}: test accuracy {record['test_acc']:.4f}, "
        f"val {record['val_acc']:.4f} ({record['epochs']} epochs, "
        f"{record['train_seconds']} s to train) -> {path}"
    )


if __name__ == "__main__":
    main()
