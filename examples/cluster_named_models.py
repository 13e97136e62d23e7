"""A named model on every node of a cluster: published once, a copy on each node, served from each.

``publish`` stores the model once; ``replicate(name, "all", progress=...)`` then places a
copy on every node, each owned by a holder actor on its node and pulled chunk by chunk
from nodes that already hold it (see docs/guide/cluster.md). One actor pinned to each
node loads the model by name: zero-copy from its own node's copy, so the load never
crosses the network. The script checks that every node answers like the local model,
then unpublishes the model, which removes it from every node.

With no ``RAY_ADDRESS`` (or ``RAY_ADDRESS=local``) it starts a small cluster on this
machine with ``ray.cluster_utils.Cluster``: a head and two more nodes, each a Ray raylet
with its own object store. With ``RAY_ADDRESS`` naming a cluster, it uses that one.

Run: ``python examples/cluster_named_models.py``
"""

from __future__ import annotations

import os
from typing import Any

import ray
import torch
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from ray_zerocopy import aliases_object_store, list_published, load_published, publish, replicate, unpublish

MODEL_NAME = "examples/cluster-classifier"
EXTRA_NODES = 2  # besides the head, for the cluster started here
STORE_BYTES = 160 * 1024**2  # each node's object store, for the cluster started here
X = torch.linspace(-1, 1, 4 * 128).reshape(4, 128)


def build_model() -> nn.Module:
    """The model to serve: about 16 MiB of weights (a real service would read a checkpoint)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(128, 16384), nn.ReLU(), nn.Linear(16384, 128)).eval()


@ray.remote(num_cpus=0)
class Server:
    """Serves the published model on the node it is pinned to."""

    def __init__(self, model_name: str) -> None:
        self.model = load_published(model_name)  # this node's copy, mapped read-only

    def predict(self, x: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            output = self.model(x)
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "output": output,
            "shared": all(aliases_object_store(p) for p in self.model.parameters()),
        }


def start_local_cluster() -> Any:
    """A head and :data:`EXTRA_NODES` nodes on this machine; the driver connected to the head."""
    from ray.cluster_utils import Cluster

    os.environ.pop("RAY_ADDRESS", None)  # "local" would make ray.init start yet another Ray
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": STORE_BYTES, "include_dashboard": False},
    )
    for _ in range(EXTRA_NODES):
        cluster.add_node(num_cpus=1, object_store_memory=STORE_BYTES)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    return cluster


def report(node_id: str, done: int, total: int) -> None:
    """The progress callback: one line as each node's copy is ready."""
    print(f"copy ready on node {node_id[:8]} ({done} of {total} nodes)")


def main() -> None:
    cluster = None
    if os.environ.get("RAY_ADDRESS", "local") in ("", "local"):
        cluster = start_local_cluster()
    else:
        ray.init()
    try:
        nodes = sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])
        print(f"a cluster of {len(nodes)} nodes")

        publish(MODEL_NAME, build_model())  # stored here, then owned by this node's holder
        ready = replicate(MODEL_NAME, "all", progress=report)  # a copy on every node, pulled from peers
        assert sorted(ready) == nodes, (ready, nodes)
        (info,) = [m for m in list_published() if m.name == MODEL_NAME]
        assert sorted(info.nodes) == nodes, info
        print(f"published {info}: a copy on each of {len(info.nodes)} nodes")

        servers = [
            Server.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(MODEL_NAME)
            for node in nodes
        ]
        answers = ray.get([server.predict.remote(X) for server in servers])
        with torch.no_grad():
            expected = build_model()(X)
        assert sorted(answer["node"] for answer in answers) == nodes
        assert all(torch.equal(answer["output"], expected) for answer in answers)
        assert all(answer["shared"] for answer in answers)
        print(f"served from every node: {len(answers)} nodes answered like the local model, zero-copy")

        for server in servers:
            ray.kill(server)
        unpublish(MODEL_NAME)
        assert MODEL_NAME not in [m.name for m in list_published()]
        print("unpublished: the model is removed from every node")
    finally:
        unpublish(MODEL_NAME, missing_ok=True)
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()


if __name__ == "__main__":
    main()
