"""Two raylets on this machine (``ray.cluster_utils.Cluster``): one copy per node, equal results.

Each node has its own object store. An actor pinned to each node loads the model; the
second node gets a copy of its own once (owned there), and a second actor on that node
maps the same copy rather than pulling another. ``test_cluster.py`` covers more nodes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch
from models import MIB, Loaded, in_object_store
from object_store import wait_for_nodes
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from ray_zerocopy import ActorWrapper


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Cluster]:
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 150 * MIB, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, object_store_memory=150 * MIB)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def where(model: Any) -> tuple[str, int]:
    """The node and the process holding ``model``."""
    return ray.get_runtime_context().get_node_id(), os.getpid()


def test_actors_on_two_nodes_share_one_copy_per_node(two_nodes: Cluster) -> None:
    node_ids = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    assert len(node_ids) == 2
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 4096), nn.ReLU(), nn.Linear(4096, 512))  # ~16 MiB
    weight_bytes = sum(p.numel() * 4 for p in model.parameters())
    wrapper = ActorWrapper(model)
    (ref,) = wrapper.constructor_kwargs["model_refs"].values()

    def pinned(node_id: str) -> Any:
        return Loaded.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(wrapper)

    actors = [pinned(node_ids[0]), pinned(node_ids[1]), pinned(node_ids[1])]
    placed = ray.get([a.apply.remote(where) for a in actors], timeout=300)
    assert [node for node, _ in placed] == [node_ids[0], node_ids[1], node_ids[1]]

    x = torch.randn(4, 512)
    expected = model(x).detach()
    for output in ray.get([a.call.remote(x) for a in actors], timeout=300):
        assert torch.allclose(output, expected)

    # Every actor maps its node's object store; no actor holds a private copy.
    assert ray.get([a.apply.remote(in_object_store) for a in actors], timeout=300) == [True, True, True]

    # One copy per node: the wrapped model stays on its node; the other node holds its own
    # copy (two actors there, one copy), and neither node holds the model twice.
    head = ray.get(ref)
    chunk_nodes = ray.experimental.get_object_locations(head["chunks"])
    here = ray.get_runtime_context().get_node_id()
    assert all(found["node_ids"] == [here] for found in chunk_nodes.values()), chunk_nodes
    used = wait_for_nodes(lambda used: all(weight_bytes <= b <= 1.1 * weight_bytes for b in used.values()))
    assert all(weight_bytes <= b <= 1.1 * weight_bytes for b in used.values()), used
    for actor in actors:
        ray.kill(actor)
