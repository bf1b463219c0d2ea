"""``python -m genlab [group=option ...] [key=value ...]``: the same as ``genlab-train``."""

from genlab.cli import main

if __name__ == "__main__":
    main()
