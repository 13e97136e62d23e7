"""Every node of a cluster (``ray.cluster_utils.Cluster``: raylets on this machine, on loopback).

Each node that uses a model ends with exactly one copy of it, owned by a holder on that
node; copies are pulled along a chain or tree of nodes that the library chose; a named
model survives the node it was published from; a node with no copy left says where the
copies were; files read on each node put no weight on the node that published. Store
usage is each raylet's own reading (``object_store.store_bytes_by_node``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from models import MIB, Loaded, in_object_store
from object_store import store_bytes_by_node, wait_for_nodes
from ray.cluster_utils import Cluster
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from torch import nn

from ray_zerocopy import ActorWrapper, Checkpoint, TaskWrapper, load_published, publish, unpublish
from ray_zerocopy.errors import ModelNotPublishedError
from ray_zerocopy_core.named import replicate
from ray_zerocopy_core.named.directory import kv_get

pytestmark = pytest.mark.usefixtures("one_thread")

NODES = 3  # besides the head
STORE = 160 * MIB
#: Small chunks, so a model of a few MiB is several chunks (and pipelining shows).
CHUNK_MIB = "1"


def make_model(seed: int = 0) -> nn.Module:
    """Eight layers of 1 MiB of float32 weights each (a chunk each), deterministic for ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers).eval()


X = torch.linspace(-1, 1, 2 * 512).reshape(2, 512)


def expected(seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return make_model(seed)(X)


def start_cluster() -> tuple[Cluster, list[Any]]:
    """A head and :data:`NODES` nodes; the driver connected to the head."""
    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ZEROCOPY_CHUNK_MIB"] = CHUNK_MIB  # the raylets and their workers inherit it
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": STORE, "include_dashboard": False},
    )
    # Connect while the head is the only node: Ray (2.40 at least) may attach a driver to any raylet of its IP.
    ray.init(address=cluster.address, logging_level="ERROR")
    nodes = [cluster.add_node(num_cpus=1, object_store_memory=STORE) for _ in range(NODES)]
    cluster.wait_for_nodes()
    return cluster, nodes


def stop_cluster(cluster: Cluster) -> None:
    ray.shutdown()
    cluster.shutdown()
    os.environ.pop("RAY_ZEROCOPY_CHUNK_MIB", None)


@pytest.fixture
def cluster() -> Iterator[tuple[Cluster, list[Any]]]:
    """A fresh cluster for one test (some tests remove nodes)."""
    made = start_cluster()
    try:
        yield made
    finally:
        stop_cluster(made[0])


def pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id, soft=False)


@ray.remote(num_cpus=0)
class LoadedByName:
    """An actor that loads a published model by name and runs it."""

    def __init__(self, name: str) -> None:
        self.model = load_published(name)

    def call(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def loaded_on(node_id: str, loadable: Any) -> Any:
    """An actor on ``node_id`` that loaded ``loadable`` (a wrapper, or a published name)."""
    actor = LoadedByName if isinstance(loadable, str) else Loaded
    return actor.options(scheduling_strategy=pinned(node_id)).remote(loadable)


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def copies_ok(used: dict[str, int], nodes: list[str], nbytes: int) -> bool:
    """Every node in ``nodes`` holds one copy: at least the weights, at most 10 % more (guards, head)."""
    return all(nbytes <= used[node] <= 1.1 * nbytes for node in nodes)


def test_each_node_gets_one_copy_owned_there_pulled_along_a_chain(cluster: tuple[Cluster, list[Any]]) -> None:
    _, workers = cluster
    head = ray.get_runtime_context().get_node_id()
    others = [worker.node_id for worker in workers]
    model = make_model()
    nbytes = weight_bytes(model)
    wrapper = ActorWrapper(model)

    assert wrapper.replicate("all") == sorted([head, *others])
    actors = [loaded_on(node, wrapper) for node in [head, *others]]
    for output in ray.get([actor.call.remote(X) for actor in actors], timeout=300):
        assert torch.equal(output, expected())
    assert ray.get([actor.apply.remote(in_object_store) for actor in actors], timeout=300) == [True] * 4
    used = wait_for_nodes(lambda used: copies_ok(used, [head, *others], nbytes))
    assert copies_ok(used, [head, *others], nbytes), {node[:8]: round(b / MIB, 1) for node, b in used.items()}

    copies = wrapper._shared.copies
    assert copies is not None and copies.origin == head
    (key,) = copies.keys.values()
    holders = {node: ray.get(copies.directory.holder.remote(node)) for node in [head, *others]}
    statuses = {node: ray.get(holder.status.remote(key)) for node, holder in holders.items()}
    for node in others:
        # Owned on its node: the holder there made every chunk, and each lies on that node only.
        assert ray.get(holders[node].node.remote()) == node
        head_ref = ray.get(holders[node].head.remote(key))
        chunks = ray.get(head_ref)["chunks"]
        assert len(chunks) >= 8  # eight weights of 1 MiB in chunks of 1 MiB
        locations = ray.experimental.get_object_locations(chunks)
        assert all(locations[chunk]["node_ids"] == [node] for chunk in chunks), locations
        # Pulled from a node the library chose: one that held or received it (no retries here).
        assert statuses[node]["sources"] and len(statuses[node]["sources"]) == 1
    parents = {node: statuses[node]["sources"][0] for node in others}
    seen, node = set(), None
    for start in others:  # every node reaches the origin by its parents: a tree rooted there, no cycle
        node, seen = start, set()
        while node != head:
            assert node not in seen, parents
            seen.add(node)
            node = parents[node]
    summary = {node[:8]: (s["served"], [source[:8] for source in s["sources"]]) for node, s in statuses.items()}
    # Each node pulled from the peer the directory named, and those form a chain: every
    # node, the source too, served one peer, but the last.
    assert parents == ray.get(copies.directory.parents.remote(key)), summary
    assert sorted(status["served"] for status in statuses.values()) == [0, 1, 1, 1], summary
    assert statuses[head]["served"] == 1, summary

    for actor in actors:
        ray.kill(actor)
    wrapper.release()
    used = wait_for_nodes(lambda used: all(b < MIB for b in used.values()))
    assert all(b < MIB for b in used.values()), used  # nothing left on any node


@ray.remote(num_cpus=0)
def publish_here(name: str, seed: int) -> list[str]:
    """Publish from whatever node this task runs on: the first copy is made there."""
    return list(publish(name, make_model(seed)).nodes)


def test_a_named_model_survives_the_node_it_was_published_from(cluster: tuple[Cluster, list[Any]]) -> None:
    ray_cluster, workers = cluster
    head = ray.get_runtime_context().get_node_id()
    source, rest = workers[0], [worker.node_id for worker in workers[1:]]
    assert ray.get(publish_here.options(scheduling_strategy=pinned(source.node_id)).remote("survivor", 3)) == [
        source.node_id
    ]
    assert sorted(replicate("survivor", "all")) == sorted([head, source.node_id, *rest])

    ray_cluster.remove_node(source)
    assert torch.equal(load_published("survivor")(X), expected(3))
    actors = [loaded_on(node, "survivor") for node in rest]
    for output in ray.get([actor.call.remote(X) for actor in actors], timeout=300):
        assert torch.equal(output, expected(3))
    for actor in actors:
        ray.kill(actor)
    assert unpublish("survivor")
    used = wait_for_nodes(lambda used: all(b < MIB for b in used.values()))
    assert all(b < MIB for b in used.values()), used


def test_a_node_with_no_copy_left_says_where_the_copies_were(cluster: tuple[Cluster, list[Any]]) -> None:
    ray_cluster, workers = cluster
    source = workers[0]
    ray.get(publish_here.options(scheduling_strategy=pinned(source.node_id)).remote("lonely", 5))
    ray_cluster.remove_node(source)
    with pytest.raises(ModelNotPublishedError) as caught:
        load_published("lonely")
    message = str(caught.value)
    assert source.node_id in message and "'lonely'" in message and "publish('lonely'" in message
    assert kv_get("lonely") is not None  # the record stays until unpublished: it says where copies were
    unpublish("lonely")


def test_files_read_on_each_node_put_no_weights_on_the_publishing_node(
    cluster: tuple[Cluster, list[Any]], tmp_path: Path
) -> None:
    _, workers = cluster
    head = ray.get_runtime_context().get_node_id()
    readers = [worker.node_id for worker in workers[:2]]
    path = tmp_path / "model.pt"
    torch.save(make_model(7).state_dict(), path)
    before = store_bytes_by_node()

    info = publish("from-files", Checkpoint(str(path), make_model), nodes=readers, copies_from="files")
    assert sorted(info.nodes) == sorted(readers) and info.built_by == "loader"
    used = store_bytes_by_node()
    assert used[head] - before[head] < MIB, used  # read on each node: nothing crossed to, or stayed on, the head
    nbytes = weight_bytes(make_model(7))
    assert all(nbytes <= used[node] - before[node] <= 1.1 * nbytes for node in readers), used
    actors = [loaded_on(node, "from-files") for node in readers]
    outputs = ray.get([actor.call.remote(X) for actor in actors], timeout=300)
    assert all(torch.equal(output, expected(7)) for output in outputs)
    unpublish("from-files")


def test_a_node_that_joins_later_skips_a_dead_holder_and_task_mode_uses_its_node_copy(
    cluster: tuple[Cluster, list[Any]],
) -> None:
    ray_cluster, workers = cluster
    first, second, late = (worker.node_id for worker in workers)
    model = make_model(11)
    nbytes = weight_bytes(model)
    wrapper = ActorWrapper(model)
    assert wrapper.replicate([first, second]) == sorted([first, second])
    ray_cluster.remove_node(workers[0])  # a holder the late node would otherwise be offered

    actor = loaded_on(late, wrapper)
    assert torch.equal(ray.get(actor.call.remote(X), timeout=300), expected(11))
    used = wait_for_nodes(lambda used: copies_ok(used, [late], nbytes))
    assert copies_ok(used, [late], nbytes), used
    ray.kill(actor)

    tasks = TaskWrapper(model, task_options={"scheduling_strategy": pinned(second)})
    assert torch.equal(tasks(X), expected(11))  # the task on `second` loaded that node's own copy
    copies = tasks._shared.copies
    assert copies is not None
    (key,) = copies.keys.values()
    holder = ray.get(copies.directory.holder.remote(second))
    assert ray.get(holder.status.remote(key))["complete"]
    tasks.release()
    wrapper.release()
