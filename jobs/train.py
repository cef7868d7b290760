"""Entry point for `ray job submit --working-dir . -- python jobs/train.py --config configs/cluster/train_demo.yaml`.

On a cluster, give run.storage_path and data.url as s3:// URLs (or absolute paths on storage every
node shares): in a submitted job a relative path is refused (docs/clusters.md).
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
