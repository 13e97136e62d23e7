"""One model to every node at once: the cluster benchmark's methods, node actor and driver.

Runs as the driver inside the head's namespace (``python -m benchkit.broadcast '<json>'``,
started by ``benchmarks/cluster.py``; prints ``RESULT <json>``). One actor per node is
pinned there (``NodeAffinitySchedulingStrategy``) and warmed; the model is then wrapped
(timed on its own), and every actor is asked to load it at the same moment and run a
first forward. Measured per node: when its first forward ended, the bytes its link
sent and received (its veth's ``/sys/class/net`` counters, before and after), and the
peak of its object store's used bytes (the raylet's ``GetNodeStats`` reply, polled
every 50 ms from inside the node by a thread in its actor, the head's by the driver,
so the polling never crosses a link).

A method is two small functions in :data:`CLUSTER_METHODS`: ``prepare(model, node_ids)``
on the driver returns what the actors need; ``load(handle)`` in each actor returns the
model (one call). ``release(handle)`` frees what ``prepare`` made.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
import torch
from torch import nn

from benchkit.memory import wait_for_quiet
from benchkit.models import ModelSpec, build_model, make_input, weight_bytes
from benchkit.netns import host_link_bytes
from benchkit.probe import reference_output
from benchkit.raynodes import RAYLET_PORT


@dataclass(frozen=True)
class ClusterMethod:
    """One way to get a model onto every node.

    Attributes:
        name: key on the command line and in results.
        label: human name for tables.
        prepare: driver step ``(model, node_ids) -> handle``; ``node_ids`` are the Ray
            node ids (hex) of the nodes that will load, the head excluded.
        load: the one call each node's actor makes, ``handle -> model``.
        release: frees what ``prepare`` made.
    """

    name: str
    label: str
    prepare: Callable[[nn.Module, list[str]], Any]
    load: Callable[[Any], nn.Module]
    release: Callable[[Any], None]


def _wrap(model: nn.Module, node_ids: list[str]) -> Any:
    """ray-zerocopy before per-node copies: one stored copy, every node pulls it from where Ray finds one."""
    from ray_zerocopy import ActorWrapper
    from ray_zerocopy_core.cluster import NODE_COPIES_ENV

    os.environ[NODE_COPIES_ENV] = "0"
    try:
        return ActorWrapper(model)
    finally:
        del os.environ[NODE_COPIES_ENV]


def _wrap_with_copies(model: nn.Module, node_ids: list[str]) -> Any:
    """ray-zerocopy: each node that loads gets its own copy, pulled along a chain of nodes."""
    from ray_zerocopy import ActorWrapper

    return ActorWrapper(model)


def _wrapper_load(handle: Any) -> nn.Module:
    return handle.load()


def _wrapper_release(handle: Any) -> None:
    handle.release()


def _put(model: nn.Module, node_ids: list[str]) -> list[Any]:
    return [ray.put(model)]  # nested, so the actor's ray.get runs inside the timed call


def _get(handle: Any) -> nn.Module:
    return ray.get(handle[0])


def _drop(handle: Any) -> None:
    handle.clear()


CLUSTER_METHODS: dict[str, ClusterMethod] = {
    method.name: method
    for method in (
        ClusterMethod(
            "ours",
            "ActorWrapper(model); wrapper.load() on each node (per-node copies)",
            _wrap_with_copies,
            _wrapper_load,
            _wrapper_release,
        ),
        ClusterMethod(
            "today",
            "the same, per-node copies off (every node pulls the one copy)",
            _wrap,
            _wrapper_load,
            _wrapper_release,
        ),
        ClusterMethod("plain", "ray.put(model); ray.get on each node", _put, _get, _drop),
    )
}


class StoreSampler:
    """Polls one raylet's object-store used bytes every ``interval`` s in a thread; keeps the peak."""

    def __init__(self, address: str, port: int = RAYLET_PORT, interval: float = 0.05) -> None:
        self.address = address
        self.port = port
        self.interval = interval
        self.baseline = self.peak = self.read()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def read(self) -> int:
        """The store's used bytes now (primary and secondary copies, objects being created)."""
        from ray._private.internal_api import node_stats

        reply = node_stats(self.address, self.port, include_memory_info=False)
        return int(reply.store_stats.object_store_bytes_used)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.read())

    def reset(self) -> None:
        """Start a new measurement: baseline and peak are the use now."""
        self.baseline = self.peak = self.read()

    def result(self) -> dict[str, int]:
        """Baseline, peak and current use, bytes."""
        now = self.read()
        self.peak = max(self.peak, now)
        return {"store_baseline": self.baseline, "store_peak": self.peak, "store_end": now}

    def stop(self) -> None:
        """End the polling thread."""
        self._stop.set()
        self._thread.join()


@ray.remote
class NodeLoader:
    """The actor on one node: warmed at start, then loads the model once and runs it once."""

    def __init__(self) -> None:
        self.address = ray.util.get_node_ip_address()
        self.sampler = StoreSampler(self.address)
        self.model: nn.Module | None = None
        with torch.no_grad():  # import and initialize torch's kernels before anything is timed
            build_model(ModelSpec(1))(make_input())

    def ready(self) -> dict[str, Any]:
        """Where it runs: address and Ray node id."""
        return {"address": self.address, "node_id": ray.get_runtime_context().get_node_id()}

    def begin(self) -> tuple[int, int]:
        """Reset the store sampler; this node's link (sent, received) bytes now."""
        self.sampler.reset()
        return host_link_bytes()

    def load(self, method: str, handle: Any) -> dict[str, Any]:
        """Load with ``method``'s one call, run the first forward; wall-clock times and output."""
        started = time.time()
        self.model = CLUSTER_METHODS[method].load(handle)
        loaded = time.time()
        with torch.no_grad():
            output = self.model(make_input())
        return {"started": started, "loaded": loaded, "finished": time.time(), "output": output}

    def end(self) -> dict[str, Any]:
        """This node's link bytes now and its store's baseline, peak and current use."""
        sent, received = host_link_bytes()
        return {"sent": sent, "received": received, **self.sampler.result()}


def wait_for_nodes(count: int, timeout: float = 300.0) -> dict[str, str]:
    """Wait until ``count`` nodes are alive; their node ids by address."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {n["NodeManagerAddress"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
        if len(alive) >= count:
            return alive
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(alive)} of {count} Ray nodes joined within {timeout:.0f} s")
        time.sleep(0.5)


def measure(method: ClusterMethod, spec: ModelSpec, head_address: str, node_addresses: list[str]) -> dict[str, Any]:
    """Every node loads the model with ``method`` at once; the per-node figures and the totals."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ids = wait_for_nodes(len(node_addresses) + 1)
    node_ids = [ids[address] for address in node_addresses]
    model = build_model(spec)
    reference = reference_output(model)  # one thread, as in the actors: equal outputs are bit-equal
    actors = [
        NodeLoader.options(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        for node_id in node_ids
    ]
    placed = ray.get([actor.ready.remote() for actor in actors], timeout=600)
    assert [p["node_id"] for p in placed] == node_ids, "an actor ran on another node than the one it was pinned to"
    head_sampler = StoreSampler(head_address)
    wait_for_quiet()

    started = time.perf_counter()
    handle = method.prepare(model, node_ids)
    wrap_s = time.perf_counter() - started
    wait_for_quiet()

    before = ray.get([actor.begin.remote() for actor in actors])
    head_sampler.reset()
    head_before = host_link_bytes()
    load_average = os.getloadavg()[0]
    t0 = time.time()
    loads = ray.get([actor.load.remote(method.name, handle) for actor in actors], timeout=1800)
    driver_all_s = time.time() - t0
    head_after = host_link_bytes()
    after = ray.get([actor.end.remote() for actor in actors])
    head_store = head_sampler.result()
    head_sampler.stop()

    nodes = []
    for address, node_id, b, load, a in zip(node_addresses, node_ids, before, loads, after, strict=True):
        nodes.append(
            {
                "address": address,
                "node_id": node_id,
                "load_s": load["loaded"] - load["started"],
                "forward_s": load["finished"] - load["loaded"],
                "ready_s": load["finished"] - t0,
                "sent": a["sent"] - b[0],
                "received": a["received"] - b[1],
                "store_baseline": a["store_baseline"],
                "store_peak": a["store_peak"],
                "store_end": a["store_end"],
                "outputs_equal": bool(torch.equal(load["output"], reference)),
            }
        )
    method.release(handle)
    for actor in actors:
        ray.kill(actor)
    return {
        "method": method.name,
        "label": method.label,
        "nodes_count": len(node_addresses),
        "weight_bytes": weight_bytes(model),
        "wrap_s": wrap_s,
        "all_ready_s": max(n["ready_s"] for n in nodes),
        "first_ready_s": min(n["ready_s"] for n in nodes),
        "driver_all_s": driver_all_s,
        "load_average_1min": load_average,
        "head": {
            "address": head_address,
            "sent": head_after[0] - head_before[0],
            "received": head_after[1] - head_before[1],
            **head_store,
        },
        "nodes": nodes,
        "outputs_equal": all(n["outputs_equal"] for n in nodes),
    }


def main(request: dict[str, Any]) -> None:
    """Connect to the cluster at ``request['address']``, measure one method, print ``RESULT <json>``."""
    ray.init(address=str(request["address"]), log_to_driver=False, configure_logging=False)
    try:
        result = measure(
            CLUSTER_METHODS[str(request["method"])],
            ModelSpec(int(request["size_mib"])),
            str(request["head_address"]),
            [str(a) for a in request["node_addresses"]],
        )
        print("RESULT " + json.dumps(result), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
