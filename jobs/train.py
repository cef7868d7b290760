"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --config configs/NAME.yaml`."""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
