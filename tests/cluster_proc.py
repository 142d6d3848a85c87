"""Runs a multi-node Ray cluster for the tests in a process of its own (``stack.RayCluster``).

Argument: a JSON spec (workers, cpus, gpus, object_store_mb, dashboard_port). Prints one JSON line with the
cluster's address and the worker nodes' ids, then answers JSON commands read from stdin, one per line:
``{"cmd": "remove", "index": i}`` removes worker ``i``; ``{"cmd": "stop"}`` shuts the cluster down and exits.
"""

from __future__ import annotations

import json
import sys

from ray.cluster_utils import Cluster


def main() -> None:
    spec = json.loads(sys.argv[1])
    mb = int(spec["object_store_mb"]) * 2**20
    head = {"num_cpus": 0, "object_store_memory": mb, "node_ip_address": "127.0.0.1"}
    if spec.get("dashboard_port"):
        head.update(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(spec["dashboard_port"]))
    cluster = Cluster(initialize_head=True, head_node_args=head)
    workers = [
        cluster.add_node(
            num_cpus=int(spec["cpus"]), num_gpus=int(spec["gpus"]), object_store_memory=mb, node_ip_address="127.0.0.1"
        )
        for _ in range(int(spec["workers"]))
    ]
    cluster.wait_for_nodes()
    print(json.dumps({"address": cluster.address, "workers": [w.node_id for w in workers]}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command["cmd"] == "remove":
                cluster.remove_node(workers[int(command["index"])])
                print(json.dumps({"removed": int(command["index"])}), flush=True)
            elif command["cmd"] == "stop":
                break
    finally:
        cluster.shutdown()
        print(json.dumps({"stopped": True}), flush=True)


if __name__ == "__main__":
    main()
