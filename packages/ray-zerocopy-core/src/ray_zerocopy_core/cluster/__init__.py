"""Every node of a cluster: one copy of a stored model per node that uses it, owned on that node.

A model is stored where it is wrapped or published (:mod:`ray_zerocopy_core.store`).
On a cluster of several nodes, a node that loads it gets its own copy, made by a
*holder* actor on that node (:mod:`.holder`) from peers that hold or are receiving it,
chunk by chunk, so that many nodes fill in about one transfer time; a *directory*
(:mod:`.directory`) knows which node holds what. This module is what the wrappers and the
named models call: :class:`NodeCopies` finds (or starts) this node's copy of a wrapper's
models, :func:`replicate` places copies ahead of time.

On a single node nothing of this runs: a wrapper's models are loaded where they were
stored, exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ray

from ray_zerocopy_core.cluster.directory import remote_directory
from ray_zerocopy_core.cluster.holder import PEER_TIMEOUT_S, CopyFailed
from ray_zerocopy_core.errors import InvalidOptionError, WeightsLostError

logger = logging.getLogger(__name__)

#: Environment variable that turns per-node copies of wrappers off (``0``): every node then
#: loads the one stored copy, which Ray transfers to it from wherever it finds one.
NODE_COPIES_ENV = "RAY_ZEROCOPY_NODE_COPIES"

#: Called as copies complete: ``progress(node_id, nodes_done, nodes_total)``.
Progress = Callable[[str, int, int], None]


def this_node() -> str:
    """The node id of the calling process."""
    return ray.get_runtime_context().get_node_id()


def alive_nodes() -> list[str]:
    """The ids of the cluster's alive nodes, sorted."""
    return sorted(node["NodeID"] for node in ray.nodes() if node.get("Alive"))


def target_nodes(nodes: str | Iterable[str]) -> list[str]:
    """``"all"`` (every alive node) or the node ids given, checked to be alive.

    Raises:
        InvalidOptionError: a node id names no alive node.
    """
    alive = alive_nodes()
    if nodes == "all":
        return alive
    wanted = [nodes] if isinstance(nodes, str) else list(nodes)
    unknown = [node for node in wanted if node not in alive]
    if unknown:
        raise InvalidOptionError(
            f"nodes= names {', '.join(map(repr, unknown))}, which are not alive nodes of this cluster; "
            f"pass 'all' or ids from ray.nodes() (alive now: {', '.join(alive)})."
        )
    return wanted


def lost(error: BaseException, what: str) -> WeightsLostError:
    """The error for a copy that could not be made, with the holder's explanation."""
    cause = getattr(error, "cause", None) or error
    detail = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
    return WeightsLostError(
        f"{what} could not be copied to this node: {detail}. Every node that held it is gone; "
        "wrap or publish the model again."
    )


def resolve(future: Any, what: str) -> Any:
    """The head ObjectRef a directory's future gives, or :class:`WeightsLostError` if the copy failed."""
    try:
        return ray.get(future)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, CopyFailed) or "CopyFailed" in str(exc):
            raise lost(exc, what) from exc
        raise
    except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.OwnerDiedError) as exc:
        raise lost(exc, what) from exc


#: This process's directory for its wrappers, per Ray session it was made in: GCS address, job id and
#: this process's node id (a new cluster may reuse the address and the job id, never a node id).
_directories: dict[tuple[str, str, str], Any] = {}


def job_directory() -> Any:
    """This process's directory for its wrappers (created on first use; it and its holders end with this process)."""
    context = ray.get_runtime_context()
    session = (str(context.gcs_address), context.get_job_id(), context.get_node_id())
    directory = _directories.get(session)
    if directory is None:
        # On this node only (soft affinity may place it elsewhere, whose loss would lose every copy)
        strategy = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(this_node(), soft=False)
        group = f"process-{uuid.uuid4().hex[:12]}"
        directory = (
            remote_directory()
            .options(num_cpus=0, max_concurrency=64, scheduling_strategy=strategy)
            .remote(group, detached=False)
        )
        _directories.clear()  # a directory of an earlier session is gone with it
        _directories[session] = directory
    return directory


@dataclass
class NodeCopies:
    """Where each node gets its copy of a wrapper's stored models.

    Attributes:
        directory: the directory that makes the copies.
        origin: the node the models were stored on (loads there use them as they are).
        keys: attribute to the key of its stored model in the directory.
    """

    directory: Any
    origin: str
    keys: dict[str, str]

    @classmethod
    def start(cls, refs: Mapping[str, ray.ObjectRef]) -> NodeCopies | None:
        """Copies on demand for models just stored here, or None on a single-node cluster (or with
        ``RAY_ZEROCOPY_NODE_COPIES=0``).

        Nothing is copied until another node loads the models. The directory and a holder
        on every node are started (once per process) and waited for here, so that a first
        load elsewhere does not wait for a process to start; the models stored here become
        this node's copies as they are the first time a copy is asked for.
        """
        nodes = alive_nodes()
        if os.environ.get(NODE_COPIES_ENV, "1") == "0" or len(nodes) < 2:
            return None
        directory = job_directory()
        running = ray.get(directory.start_holders.remote(nodes))
        if len(running) < len(nodes):
            logger.warning(
                "node holders of %d of %d nodes still start after %.0f s; a load there waits for its holder",
                len(nodes) - len(running),
                len(nodes),
                PEER_TIMEOUT_S,
            )
        return cls(directory, this_node(), {attr: ref.hex() for attr, ref in refs.items()})

    def head(self, attr: str, origin_ref: ray.ObjectRef) -> ray.ObjectRef:
        """The ObjectRef of ``attr``'s stored model on this node: the origin's here, else this node's copy."""
        node = this_node()
        if node == self.origin:
            return origin_ref
        what = f"The model {attr!r}" if attr else "The model"
        try:
            future = ray.get(self.directory.copy_on.remote(self.keys[attr], node, None, (self.origin, [origin_ref])))
        except ray.exceptions.RayActorError as exc:  # the directory ended with the process that wrapped
            raise lost(exc, what) from exc
        return resolve(future, what)

    def replicate(
        self, refs: Mapping[str, ray.ObjectRef], nodes: list[str], progress: Progress | None = None
    ) -> list[str]:
        """Copies of the models stored at ``refs`` on ``nodes`` now, waited for; return the nodes that hold one."""
        labels = [(node, attr) for node in nodes if node != self.origin for attr in self.keys]
        calls = [
            self.directory.copy_on.remote(self.keys[attr], node, None, (self.origin, [refs[attr]]))
            for node, attr in labels
        ]
        return wait_for_copies(ray.get(calls), labels, nodes, progress, "The model")

    def release(self, wait: bool = False) -> None:
        """Drop every node's copy (the origin's objects go with the wrapper's refs); nothing once Ray is shut down.

        ``wait``: return once every holder has dropped its copy (an explicit ``release()``);
        without it (the wrapper garbage-collected) the holders are only told.
        """
        if ray.is_initialized():
            with contextlib.suppress(Exception):  # its directory may be gone already (the cluster shut down)
                released = self.directory.release.remote(list(self.keys.values()))
                if wait:
                    ray.get(released, timeout=PEER_TIMEOUT_S)


def wait_for_copies(
    futures: list[Any], labels: list[tuple[str, str]], nodes: list[str], progress: Progress | None, what: str
) -> list[str]:
    """Wait for every copy future (one per ``(node, attr)`` label), logging each node as it completes.

    A node of ``nodes`` with no label held its copy already and counts as done at once.

    Raises:
        WeightsLostError: a copy failed (the first failure's explanation).
    """
    pending = dict(zip(futures, labels))
    remaining = {node: sum(1 for n, _ in labels if n == node) for node in nodes}
    done = {node for node, count in remaining.items() if count == 0}  # held a copy already
    started = time.monotonic()
    for node in sorted(done):
        if progress is not None:
            progress(node, len(done), len(nodes))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        node, _attr = pending.pop(ready[0])
        resolve(ready[0], what)
        remaining[node] -= 1
        if remaining[node] == 0:
            done.add(node)
            logger.info(
                "copy on node %s ready after %.1f s (%d of %d nodes)",
                node,
                time.monotonic() - started,
                len(done),
                len(nodes),
            )
            if progress is not None:
                progress(node, len(done), len(nodes))
    return sorted(set(nodes))
