"""The copy directory: which nodes hold a copy of each stored model, and a copy made on a node that needs one.

A directory serves one *group* of node holders (:mod:`ray_zerocopy_core.cluster.holder`):
the wrappers of one process (the directory is then owned by that process and its
holders by the directory, so all of them end with it), or a holder group of named models
(detached, with named holders: they outlive the script that published). A directory owns
no weights, so losing it loses no copy; it only knows which node holds what, and starts
copies. Torch-free, like the holders, and pickled by value with them.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from typing import Any

import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_zerocopy_core import process_memory
from ray_zerocopy_core.cluster import holder as holders

#: The Ray namespace of ray-zerocopy's detached actors and records, whatever the caller's namespace.
NAMESPACE = "ray_zerocopy_named"


def holder_name(group: str, node: str) -> str:
    """The actor name of ``group``'s holder on ``node`` (detached groups only)."""
    return f"node-holder:{group}:{node}"


class CopyDirectory:
    """Knows, per key, the nodes that hold or receive a copy, and makes copies where asked.

    ``detached``: its holders outlive the job, named (:func:`holder_name`) so that a new
    directory of the same group finds them; otherwise they are owned by this actor.
    """

    def __init__(self, group: str, detached: bool, holder_options: dict[str, Any] | None = None) -> None:
        self._group = group
        self._detached = detached
        self._holder_options = {k: v for k, v in (holder_options or {}).items() if k != "scheduling_strategy"}
        self._holders: dict[str, Any] = {}  # node -> its holder
        self._copies: dict[str, dict[str, Any]] = {}  # key -> node -> the ObjectRef of its head there
        self._parents: dict[str, dict[str, str]] = {}  # key -> node -> the node it was told to pull from
        self._lock = threading.RLock()

    def ready(self) -> str:
        """This directory's node id (answers once the actor runs)."""
        return ray.get_runtime_context().get_node_id()

    def holder(self, node: str) -> Any:
        """The holder on ``node``: found (a detached group's, by name) or created, pinned there."""
        with self._lock:
            handle = self._holders.get(node)
            if handle is None:
                options: dict[str, Any] = {
                    "num_cpus": 0,
                    "max_restarts": 0,
                    **self._holder_options,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
                }
                if self._detached:
                    name = holder_name(self._group, node)
                    options.update(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True)
                handle = holders.remote_node_holder().options(**options).remote(self._group)
                self._holders[node] = handle
            return handle

    def start_holders(self, nodes: list[str]) -> list[str]:
        """Start a holder on each of ``nodes`` that has none; return the nodes whose holder runs, once they
        do (waiting at most :data:`~.holder.PEER_TIMEOUT_S` for the others)."""
        answers = [self.holder(node).node.remote() for node in nodes]
        running, _ = ray.wait(answers, num_returns=len(answers), timeout=holders.PEER_TIMEOUT_S)
        return list(ray.get(running))

    def _record(self, key: str, node: str, future: Any) -> Any:
        with self._lock:
            self._copies.setdefault(key, {})[node] = future
        return future

    def adopt(self, key: str, node: str, head_box: list[Any], own: bool) -> Any:
        """Make the model stored on ``node`` (``head_box[0]``) that node's copy of ``key``; return its head future."""
        return self._record(key, node, self.holder(node).adopt.remote(key, head_box, own))

    def build(self, prefix: str, node: str, job: bytes) -> Any:
        """Run ``job`` on ``node`` (:meth:`NodeHolder.build <holders.NodeHolder.build>`); return its result future."""
        return self.holder(node).build.remote(prefix, job)

    def built(self, keys: list[str], node: str) -> None:
        """Record that ``node`` holds ``keys`` (built there)."""
        for key in keys:
            self._record(key, node, self.holder(node).head.remote(key, True))

    def copy_on(
        self, key: str, node: str, known: list[str] | None = None, origin: tuple[str, list[Any]] | None = None
    ) -> Any:
        """The future of ``node``'s head of ``key``, starting its copy from peers if it has none.

        ``known``: nodes that held ``key`` before this directory started (a named model's
        record); their holders are found by name. ``origin``: the node a wrapper's model
        was stored on and its boxed head ref, which becomes that node's copy (the holder
        there holds the ref) the first time. A copy that failed is started again.
        """
        with self._lock:
            copies = self._copies.setdefault(key, {})
            if origin is not None and origin[0] not in copies:
                self.adopt(key, origin[0], origin[1], False)
            for other in known or ():
                if other not in copies and self._find(other) is not None:
                    copies[other] = self._holders[other].head.remote(key, True)
            future = copies.get(node)
            if future is not None and not self._failed(future):
                return future
            # Under the lock: a node asked for next sees this one among its peers (so nodes form a chain).
            peers = [(other, self._holders[other]) for other in copies if other != node and other in self._holders]
            parent = self._parent(key, [other for other, _ in peers])
            if parent is not None:
                self._parents.setdefault(key, {})[node] = parent
            return self._record(key, node, self.holder(node).replicate.remote(key, peers, parent))

    def _parent(self, key: str, candidates: list[str]) -> str | None:
        """Which of ``candidates`` a new copy of ``key`` pulls from: the one serving the fewest copies still
        being made, the latest to join among equals (a chain's tail); None if every one failed."""
        copies = self._copies[key]
        live = [node for node in candidates if not self._failed(copies[node])]
        being_made = [child for child in self._parents.get(key, {}) if child in copies]
        futures = [copies[child] for child in being_made]
        done = set(ray.wait(futures, num_returns=len(futures), timeout=0)[0]) if futures else set()
        serving = dict.fromkeys(live, 0)
        for child in being_made:
            parent = self._parents[key][child]
            if parent in serving and copies[child] not in done:
                serving[parent] += 1
        order = {node: position for position, node in enumerate(copies)}
        return min(live, key=lambda node: (serving[node], -order[node]), default=None)

    def _find(self, node: str) -> Any:
        """A detached group's holder on ``node`` if one runs there (None: none, its node is gone, not detached)."""
        if not self._detached:
            return None
        try:
            handle = ray.get_actor(holder_name(self._group, node), namespace=NAMESPACE)
        except ValueError:
            return None
        self._holders[node] = handle
        return handle

    @staticmethod
    def _failed(future: Any) -> bool:
        ready, _ = ray.wait([future], timeout=0)
        if not ready:
            return False
        try:
            ray.get(future)
        except Exception:
            return True
        return False

    def parents(self, key: str) -> dict[str, str]:
        """Each node that copied ``key`` from a peer, and the peer it was told to pull from."""
        with self._lock:
            return dict(self._parents.get(key, {}))

    def nodes(self, key: str) -> list[str]:
        """The nodes that hold or receive ``key``."""
        with self._lock:
            return list(self._copies.get(key, {}))

    def release(self, keys: list[str], nodes: list[str] | None = None) -> None:
        """Drop every node's copy of ``keys`` (``nodes``: holders to reach besides those this directory knows).

        A holder left holding nothing is stopped.
        """
        with self._lock:
            involved = {node for key in keys for node in self._copies.pop(key, {})} | set(nodes or ())
            for key in keys:
                self._parents.pop(key, None)
            handles = {
                node: self._holders.get(node) or (self._find(node) if self._detached else None) for node in involved
            }
        for node, handle in handles.items():
            if handle is None:
                continue
            with contextlib.suppress(*holders.PEER_GONE):
                if ray.get(handle.release.remote(keys), timeout=holders.PEER_TIMEOUT_S) == 0:
                    ray.kill(handle, no_restart=True)
                    with self._lock:
                        self._holders.pop(node, None)


@functools.cache
def remote_directory() -> Any:
    """:class:`CopyDirectory` as a Ray actor class, made on first use (importing defines no actor)."""
    for module in (sys.modules[__name__], holders, process_memory):
        cloudpickle.register_pickle_by_value(module)
    return ray.remote(CopyDirectory)
