"""Reading the cluster's object-store usage from tests, and waiting for it to settle.

Usage is the raylet's own ``object_store_bytes_used`` (what ``ray memory --stats-only``
prints): every byte allocated in the plasma store, so a leaked model stays in it. Ray
frees objects asynchronously, so checks poll with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import ray
from ray._private.internal_api import get_memory_info_reply, get_state_from_address


def store_stats() -> Any:
    """The raylet's object-store statistics (bytes used, spilled, restored...)."""
    reply = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address))
    return reply.store_stats


def store_bytes_used() -> int:
    """Bytes allocated in the cluster's object store right now."""
    return int(store_stats().object_store_bytes_used)


def wait_for_store(predicate: Callable[[int], bool], timeout: float = 60) -> int:
    """Poll the store's usage until ``predicate(used)`` holds or ``timeout`` passes; return the last reading."""
    deadline = time.monotonic() + timeout
    used = store_bytes_used()
    while not predicate(used) and time.monotonic() < deadline:
        time.sleep(0.25)
        used = store_bytes_used()
    return used


def wait_for_store_at_most(limit: int, timeout: float = 60) -> int:
    """Poll until the store holds at most ``limit`` bytes; return the last reading."""
    return wait_for_store(lambda used: used <= limit, timeout)


def store_bytes_by_node() -> dict[str, int]:
    """Bytes allocated in each alive node's object store right now (node id to bytes), from each raylet."""
    from ray._private.internal_api import node_stats

    used = {}
    for node in ray.nodes():
        if node.get("Alive"):
            reply = node_stats(node["NodeManagerAddress"], node["NodeManagerPort"], include_memory_info=False)
            used[node["NodeID"]] = int(reply.store_stats.object_store_bytes_used)
    return used


def wait_for_nodes(predicate: Callable[[dict[str, int]], bool], timeout: float = 60) -> dict[str, int]:
    """Poll every node's store usage until ``predicate(usage)`` holds or ``timeout`` passes; return the last."""
    deadline = time.monotonic() + timeout
    used = store_bytes_by_node()
    while not predicate(used) and time.monotonic() < deadline:
        time.sleep(0.25)
        used = store_bytes_by_node()
    return used
