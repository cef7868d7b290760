"""Entry point for `ray job submit --working-dir . -- python jobs/monitor.py --config configs/monitor.yaml`
(and the RayCronJob cluster/kuberay/raycronjob-monitor.yaml). Exit 3: drift alert.

On a cluster, give the registry and the reference as s3:// URLs and monitor.url as the API's address
inside the cluster; the API key comes from the job's environment ($GANRAY_API_KEY by default).
"""
import sys

from ganray.cli import main

if __name__ == "__main__":
    sys.exit(main(["monitor", *sys.argv[1:]]))
