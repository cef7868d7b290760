"""Entry point for `ray job submit --working-dir . -- python jobs/train_labeler.py --config configs/labeler_demo.yaml`.

On a cluster give run.storage_path, data.url and publish.registry as s3:// URLs (or paths every node
shares): relative paths resolve inside the job's uploaded working directory.
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["labeler", "train", *sys.argv[1:]]))
