"""Entry point for `ray job submit --working-dir . -- python jobs/eval_utility.py --config configs/eval_utility_demo.yaml`.

On a cluster give labeler.data.url, utility.generated, utility.output and registry.url as s3:// URLs
(or paths every node shares): relative paths resolve inside the job's uploaded working directory.
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", "utility", *sys.argv[1:]]))
