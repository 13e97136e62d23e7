"""The node holder: an actor on one node that owns that node's copy of stored models and serves it to peers.

A holder never rebuilds a model: it only moves chunks (:mod:`ray_zerocopy_core.store`),
so it is kept free of torch. It is pickled by value with the standard-library modules it
uses (:func:`remote_node_holder`), because a long-lived process keeps what it imports.

A node's copy of a stored model (a *key*) is made one of three ways:

- :meth:`NodeHolder.adopt`: a model stored on this node by another process becomes the
  node's copy, its chunks copied store to store so the holder owns them (or its refs
  held, for the wrapping process's own node);
- :meth:`NodeHolder.build`: a job (a loader, or a checkpoint read from this node's files)
  runs in a task on this node and streams the stored models; the holder owns what it streams;
- :meth:`NodeHolder.replicate`: the chunks are pulled from peer holders.

Pulling chunk ``i`` from a peer is a call to the peer's :meth:`NodeHolder.export_chunk`,
which waits until the peer holds chunk ``i``: a node forwards the chunks it has while it
receives the rest, so a chain of nodes fills in about one transfer time. The value the
call returns is a transient object owned by the puller and created on the peer's node;
the puller copies it into an object of its own, on its node, and drops it
(:func:`drop_everywhere`), which frees it on both nodes. Each node ends with one copy of
each chunk, owned by its own holder: losing another node loses nothing here.

Which peer: the directory (:mod:`.directory`) names one, its *parent*, when it starts the
copy: the peer serving the fewest copies still being made, the latest to join among
equals, so nodes that arrive together form a chain whose every link carries the model
once. The puller attaches (:meth:`NodeHolder.attach`) to its parent, waiting for the
parent's own copy to begin if it has not yet. Without a parent, or once the parent is
lost, the puller asks each peer for its :meth:`NodeHolder.status` and attaches to the
one serving the fewest others among those that hold the next chunk or are receiving the
model, one that serves fewer than :data:`MAX_CHILDREN` first. If a peer dies midway,
the puller so moves to another that already has the next chunk; if none has it, the
copy fails, naming the nodes that were lost.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_zerocopy_core import process_memory

#: Peers a holder serves at once while another holder has room (1: nodes that arrive together form a chain).
MAX_CHILDREN = 1
#: How long a puller waits for a peer that is about to serve (its holder starting) before it shares a busy one.
CROWD_WAIT_S = 30.0
#: Chunks a puller asks for ahead of the one it is copying, so that its link stays busy while each
#: chunk's calls go back and forth (measured over 200 Mbit/s links: 2 and 4 fill a chain equally fast).
WINDOW = 2
#: How long a puller waits for a peer to answer a question before it counts the peer as gone.
PEER_TIMEOUT_S = 60.0
#: How long a puller waits for a chunk, or for some peer to hold a chunk it needs, before it gives up.
STALL_TIMEOUT_S = 300.0
#: Concurrency group of the calls that wait (for chunks, for a copy): they may not starve the others.
WAITING = "waiting"
#: Threads for waiting calls (one per peer pull, export and waiting loader at most).
WAITING_THREADS = 1000

#: Ray errors that mean a peer, or an object it served, is gone.
PEER_GONE = (
    ray.exceptions.RayActorError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.OwnerDiedError,
    ray.exceptions.GetTimeoutError,
)

#: A peer: its node id and its holder's handle.
Peer = tuple[str, Any]


class CopyFailed(RuntimeError):
    """This node's copy could not be made; the message says what was lost."""


def drop_everywhere(transient: Any) -> None:
    """Drop ``transient`` (an object this process owns), deleting it from every node's store now where Ray can.

    Dropping the last reference frees the object on the node that made it, but the copy
    fetched to this node can stay behind as cached bytes until the store needs the room:
    on Ray 2.40, after the peer's node died, such copies were seen there a minute later.
    Ray releases that have ``ray._private.internal_api.free`` (up to 2.58; 2.59 removed it)
    delete every copy with it; on the others the reference is only dropped.
    """
    try:
        from ray._private import internal_api
    except ImportError:
        return
    free = getattr(internal_api, "free", None)
    if free is not None:
        free([transient], local_only=False)


@dataclass
class _Copy:
    """This node's copy of one stored model, complete or on its way."""

    meta: dict[str, Any] | None = None  # the head without its chunks, plus "count"
    chunks: list[Any] = field(default_factory=list)
    head: Any = None  # the ObjectRef of this node's head, once every chunk is here
    error: str | None = None
    children: int = 0
    served: int = 0  # peers that ever pulled from here
    sources: list[str] = field(default_factory=list)  # the peers this copy pulled from, in order
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def have(self) -> int:
        """How many chunks, from the first, are here."""
        count = 0
        for chunk in self.chunks:
            if chunk is None:
                break
            count += 1
        return count


class NodeHolder:
    """The actor that owns one node's copies (see the module doc). Methods run in threads."""

    def __init__(self, group: str) -> None:
        self._group = group
        self._node = ray.get_runtime_context().get_node_id()
        self._copies: dict[str, _Copy] = {}
        self._changed = threading.Condition()

    def node(self) -> str:
        """This holder's node id (answers once the actor runs)."""
        return self._node

    # --- making this node's copy ----------------------------------------------------------

    def _claim(self, key: str) -> tuple[_Copy, bool]:
        """The copy of ``key``, and whether the caller must make it (no other call is making it)."""
        with self._changed:
            copy = self._copies.get(key)
            if copy is not None and copy.error is None:
                return copy, False
            copy = self._copies[key] = _Copy()
            self._changed.notify_all()  # a peer may wait to attach to this copy
            return copy, True

    def _set_meta(self, copy: _Copy, meta: dict[str, Any]) -> None:
        with self._changed:
            copy.meta = dict(meta)
            copy.chunks = [None] * int(meta["count"])
            self._changed.notify_all()

    def _add_chunk(self, copy: _Copy, position: int, ref: Any) -> None:
        with self._changed:
            copy.chunks[position] = ref
            self._changed.notify_all()

    def _finish(self, copy: _Copy, head: Any = None, error: str | None = None) -> None:
        """Mark ``copy`` complete (its head put here unless given) or failed."""
        with self._changed:
            if error is None:
                assert copy.meta is not None
                if head is None:
                    fields = {name: value for name, value in copy.meta.items() if name != "count"}
                    head = ray.put({**fields, "chunks": list(copy.chunks)})
                copy.head = head
            else:
                copy.error, copy.chunks = error, []
            copy.done.set()
            self._changed.notify_all()

    def _wait(self, copy: _Copy) -> Any:
        copy.done.wait()
        if copy.error is not None:
            raise CopyFailed(copy.error)
        return copy.head

    @ray.method(concurrency_group=WAITING)
    def adopt(self, key: str, head_box: list[Any], own: bool) -> Any:
        """Take the model stored on this node at ``head_box[0]`` as the node's copy of ``key``; return its head.

        ``own``: copy each chunk, store to store, so that this holder owns the copy (the
        caller then drops its own); otherwise hold the caller's refs.
        """
        copy, mine = self._claim(key)
        if not mine:
            return self._wait(copy)
        try:
            head = dict(ray.get(head_box[0]))
            refs = list(head.pop("chunks"))
            self._set_meta(copy, {**head, "count": len(refs)})
            for position, ref in enumerate(refs):
                if own:
                    value = ray.get(ref)
                    ref = ray.put(value)
                    del value
                self._add_chunk(copy, position, ref)
        except Exception as exc:
            self._finish(copy, error=f"could not take the model stored on node {self._node}: {exc}")
        else:
            self._finish(copy, head=None if own else head_box[0])
        return self._wait(copy)

    @ray.method(concurrency_group=WAITING)
    def build(self, prefix: str, job: bytes) -> dict[str, Any]:
        """Run ``job`` in a task on this node; own the stored models it streams as keys ``prefix + attr``.

        ``job`` is a pickled zero-argument generator function that yields a dict (``models``:
        attribute to head meta with ``count``; ``extra``: anything for the caller), then
        every chunk of every model, in that order. Returns ``extra`` and the heads.
        """
        stream = None
        copies: dict[str, _Copy] = {}
        try:
            here = NodeAffinitySchedulingStrategy(self._node, soft=False)
            # num_cpus=0: callers waiting here (replicas in their constructor) may hold every CPU.
            runner: Any = ray.remote(run_job).options(num_cpus=0, num_returns="streaming", scheduling_strategy=here)
            stream = runner.remote(job)
            first: dict[str, Any] = ray.get(next(stream))
            for attr, meta in first["models"].items():
                copy, _ = self._claim(prefix + attr)
                if copy.meta is not None:  # a copy of this key exists already: build a fresh one
                    with self._changed:
                        copy = self._copies[prefix + attr] = _Copy()
                self._set_meta(copy, meta)
                copies[attr] = copy
            for copy in copies.values():
                for position in range(len(copy.chunks)):
                    self._add_chunk(copy, position, next(stream))
            for surplus in stream:  # wait for the job's end: its files closed, their cache dropped
                raise RuntimeError(f"the job streamed more than its models' chunks ({surplus})")
            for copy in copies.values():
                self._finish(copy)
        except Exception as exc:
            for copy in copies.values():
                self._finish(copy, error=f"building on node {self._node} failed: {type(exc).__name__}: {exc}")
            raise
        finally:
            del stream
            process_memory.trim_heap()
        return {"extra": first.get("extra"), "heads": {attr: copy.head for attr, copy in copies.items()}}

    @ray.method(concurrency_group=WAITING)
    def replicate(self, key: str, peers: list[Peer], parent: str | None = None) -> Any:
        """Make this node's copy of ``key`` from ``peers`` (holders that hold or receive it); return its head.

        ``parent``: the node of ``peers`` to pull from first (others only if it is lost).
        Concurrent calls for one key make one copy. Raises :class:`CopyFailed`, naming
        what was lost, when no peer can give a chunk.
        """
        copy, mine = self._claim(key)
        if mine:
            try:
                self._pull(key, copy, [peer for peer in peers if peer[0] != self._node], parent)
            except Exception as exc:
                message = str(exc) if isinstance(exc, CopyFailed) else f"{type(exc).__name__}: {exc}"
                self._finish(copy, error=message)
            else:
                self._finish(copy)
        return self._wait(copy)

    def _pull(self, key: str, copy: _Copy, peers: list[Peer], parent: str | None) -> None:
        """Copy every chunk of ``key`` from ``parent``, or from other peers once it is lost."""
        lost: dict[str, str] = {}  # peer node -> why it was left
        while copy.meta is None or copy.have < len(copy.chunks):
            attached = self._attach_parent(key, peers, parent, lost) if not copy.sources else None
            node, peer = attached or self._attach(key, peers, copy.have, lost)
            copy.sources.append(node)
            try:
                if copy.meta is None:
                    self._set_meta(copy, ray.get(peer.meta.remote(key), timeout=STALL_TIMEOUT_S))
                self._pull_from(key, copy, peer)
            except PEER_GONE as exc:
                lost[node] = type(exc).__name__
            except ray.exceptions.RayTaskError as exc:  # the peer's own copy failed
                lost[node] = str(exc.cause if isinstance(exc.cause, CopyFailed) else exc).splitlines()[0]
            finally:
                with contextlib.suppress(*PEER_GONE):
                    peer.detach.remote(key)

    def _pull_from(self, key: str, copy: _Copy, peer: Any) -> None:
        """Copy the chunks ``copy`` lacks from ``peer``, asking :data:`WINDOW` ahead."""
        asked: deque[Any] = deque()
        following = position = copy.have
        count = len(copy.chunks)
        while position < count:
            while following < count and len(asked) < WINDOW:
                asked.append(peer.export_chunk.remote(key, following))
                following += 1
            transient = asked.popleft()
            # Fetched by ray.wait: a ray.get alone of a finished call's value on another node at
            # times waits a whole second (Ray asks its node again once a second) before it moves.
            ray.wait([transient], fetch_local=True, timeout=STALL_TIMEOUT_S)
            value = ray.get(transient, timeout=STALL_TIMEOUT_S)
            ref = ray.put(value)
            del value
            drop_everywhere(transient)
            del transient
            self._add_chunk(copy, position, ref)
            position += 1

    def _attach_parent(self, key: str, peers: list[Peer], parent: str | None, lost: dict[str, str]) -> Peer | None:
        """``parent``'s peer, attached to once its copy of ``key`` has begun; None if it has none or is gone."""
        for node, peer in peers:
            if node == parent:
                try:
                    if ray.get(peer.attach.remote(key, None, CROWD_WAIT_S), timeout=CROWD_WAIT_S + PEER_TIMEOUT_S):
                        return node, peer
                except PEER_GONE as exc:
                    lost[node] = type(exc).__name__
        return None

    def _attach(self, key: str, peers: list[Peer], position: int, lost: dict[str, str]) -> Peer:
        """A peer that holds chunk ``position`` (at the start: one that holds or receives the model), attached to.

        Waits while some peer may still come to hold it (one starting, or receiving it);
        fails once every peer is gone or has failed, or after :data:`STALL_TIMEOUT_S`.
        """
        deadline = time.monotonic() + STALL_TIMEOUT_S
        crowd_deadline = time.monotonic() + CROWD_WAIT_S
        while True:
            candidates, hopeful, starting = [], False, False
            for node, peer in peers:
                if node in lost:
                    continue
                try:
                    status = ray.get(peer.status.remote(key), timeout=PEER_TIMEOUT_S)
                except PEER_GONE as exc:
                    lost[node] = type(exc).__name__
                    continue
                if status["failed"]:
                    lost[node] = "its own copy failed"
                    continue
                starting = starting or not status["serving"]  # its copy has not begun here yet
                hopeful = hopeful or (status["serving"] and not status["complete"])  # still receiving
                if status["serving"] and (status["have"] > position or position == 0):
                    candidates.append((status["children"], -status["have"], node, peer))
            candidates.sort(key=lambda candidate: candidate[:3])
            # One with room first; else, once no peer is about to serve, the least busy one.
            crowded = not starting or time.monotonic() > crowd_deadline
            for limit in (MAX_CHILDREN, None) if crowded else (MAX_CHILDREN,):
                for _, _, node, peer in candidates:
                    with contextlib.suppress(*PEER_GONE):
                        if ray.get(peer.attach.remote(key, limit), timeout=PEER_TIMEOUT_S):
                            return node, peer
            waiting_for_starters = starting and time.monotonic() < crowd_deadline
            if (not hopeful and not waiting_for_starters) or time.monotonic() > deadline:
                gone = ", ".join(f"{node} ({why})" for node, why in lost.items()) or "none"
                raise CopyFailed(
                    f"no node holds chunk {position} of this model any more to copy it to node {self._node}; "
                    f"nodes lost or failed: {gone}"
                )
            time.sleep(0.05)  # a peer is starting, or still receiving that chunk from its own source

    # --- serving peers --------------------------------------------------------------------

    def status(self, key: str) -> dict[str, Any]:
        """What this node has of ``key``: chunks here, peers it serves now and ever did, the peers it pulled
        from, whether it serves (holds or receives the model), is complete, failed."""
        with self._changed:
            copy = self._copies.get(key)
            return {
                "node": self._node,
                "have": copy.have if copy is not None else 0,
                "children": copy.children if copy is not None else 0,
                "served": copy.served if copy is not None else 0,
                "sources": list(copy.sources) if copy is not None else [],
                "serving": copy is not None and copy.error is None and copy.meta is not None,
                "complete": copy is not None and copy.head is not None,
                "failed": copy is not None and copy.error is not None,
            }

    @ray.method(concurrency_group=WAITING)
    def attach(self, key: str, limit: int | None, wait_s: float = 0.0) -> bool:
        """Count one more peer pulling ``key`` from here, if fewer than ``limit`` do (always with None).

        ``wait_s``: how long to wait for this node's copy of ``key`` to begin if it has not.
        """
        with self._changed:
            self._changed.wait_for(lambda: key in self._copies, timeout=wait_s)
            copy = self._copies.get(key)
            if copy is None or copy.error is not None or (limit is not None and copy.children >= limit):
                return False
            copy.children += 1
            copy.served += 1
            return True

    def detach(self, key: str) -> None:
        """A peer stopped pulling ``key`` from here."""
        with self._changed:
            copy = self._copies.get(key)
            if copy is not None and copy.children > 0:
                copy.children -= 1

    @ray.method(concurrency_group=WAITING)
    def meta(self, key: str) -> dict[str, Any]:
        """The head of ``key`` without its chunks (plus ``count``), once known."""
        with self._changed:
            copy = self._copies.get(key)
            self._changed.wait_for(lambda: copy is None or copy.meta is not None or copy.error is not None)
            if copy is None or copy.meta is None:
                raise CopyFailed(f"node {self._node} has no copy of this model ({copy.error if copy else 'released'})")
            return dict(copy.meta)

    @ray.method(concurrency_group=WAITING)
    def export_chunk(self, key: str, position: int) -> Any:
        """The value of chunk ``position`` of ``key`` once it is here; returned, it is a copy the caller owns."""
        with self._changed:
            copy = self._copies.get(key)

            def arrived() -> bool:
                return copy is None or copy.error is not None or (copy.meta is not None and copy.chunks[position])

            self._changed.wait_for(arrived, timeout=STALL_TIMEOUT_S)
            if copy is None or copy.error is not None or copy.meta is None or copy.chunks[position] is None:
                why = "released" if copy is None else copy.error or "the chunk did not arrive in time"
                raise CopyFailed(f"node {self._node} cannot give this model's chunk {position} ({why})")
            ref = copy.chunks[position]
        return ray.get(ref)

    @ray.method(concurrency_group=WAITING)
    def head(self, key: str, wait: bool = False) -> Any:
        """This node's head of ``key`` if its copy is complete (``wait``: once it is), else None."""
        with self._changed:
            copy = self._copies.get(key)
        if copy is None:
            if wait:
                raise CopyFailed(f"node {self._node} holds no copy of this model")
            return None
        if wait:
            return self._wait(copy)
        return copy.head

    def release(self, keys: list[str]) -> int:
        """Drop this node's copies of ``keys`` (Ray frees them once no worker uses them); return how many remain."""
        with self._changed:
            for key in keys:
                copy = self._copies.pop(key, None)
                if copy is not None and not copy.done.is_set():
                    copy.error = "released"
                    copy.done.set()
            self._changed.notify_all()
            return sum(1 for copy in self._copies.values() if copy.error is None)

    def keys(self) -> list[str]:
        """The keys of the copies this node holds or receives."""
        with self._changed:
            return list(self._copies)

    def private_memory(self) -> int:
        """This holder's private memory in bytes (the stored weights are not in it)."""
        process_memory.trim_heap()
        return process_memory.private_memory_bytes()


def run_job(job: bytes) -> Iterator[Any]:
    """Task body: unpickle ``job`` (a zero-argument generator function) here and stream what it yields."""
    yield from cloudpickle.loads(job)()


@functools.cache
def remote_node_holder() -> Any:
    """:class:`NodeHolder` as a Ray actor class, made on first use (importing this module defines no actor).

    This module and :mod:`~ray_zerocopy_core.process_memory` are pickled by value, so a
    holder process rebuilds their code instead of importing ``ray_zerocopy_core`` (and torch).
    """
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(process_memory)
    make: Any = ray.remote
    return make(concurrency_groups={WAITING: WAITING_THREADS})(NodeHolder)
