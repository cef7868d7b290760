"""Entry point for `ray job submit --working-dir . -- python jobs/generate.py --config configs/cluster/generate_1m.yaml`.

On a cluster, give the registry and the output as s3:// URLs (or absolute paths on storage every
node shares): in a submitted job a relative path is refused (docs/clusters.md).
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate", *sys.argv[1:]]))
