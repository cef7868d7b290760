"""Entry point for `ray job submit --working-dir . -- python jobs/evaluate.py --config configs/eval_demo.yaml`.

On a cluster, give the registry, the reference dataset and the output as s3:// URLs (or paths on
storage every node shares): relative paths resolve inside the job's uploaded working directory.
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
