"""python train.py [group=option ...] [key=value ...]  (see --help)."""

from genlab.cli import main

if __name__ == "__main__":
    main()
