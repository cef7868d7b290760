"""Entry point for `ray job submit --working-dir . -- python jobs/retrain.py --data s3://.../faces-v2`
(or `--cause EVENT_ID`, a drift alert of `ganray monitor`). Exit 0: promoted; 1: the gate refused.

On a cluster, the registry, the promoted run's storage and the data must be s3:// URLs (or storage
every node shares).
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["retrain", *sys.argv[1:]]))
