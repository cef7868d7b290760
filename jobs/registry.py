"""Entry point for `ray job submit --working-dir . -- python jobs/registry.py push --registry s3://... --from-run s3://... RUN`.

Publishing a run from inside the cluster: the job uses the cluster's S3 access (an instance role),
so the machine you submit from needs none.
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["registry", *sys.argv[1:]]))
