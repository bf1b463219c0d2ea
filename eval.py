"""Evaluate a checkpoint: python eval.py ckpt_path=<run>/checkpoints/best.ckpt [key=value ...]"""

from genlab.evaluate import main

if __name__ == "__main__":
    main()
