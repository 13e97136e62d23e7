"""Putting models into Ray's object store in chunks, and getting them back, checked.

A stored model is a *head* object plus several *chunk* objects. A chunk holds a run of
the model's storages framed by two zero-filled guards (for write protection, see
:mod:`ray_zerocopy_core.memory`); the head (:class:`StoredModel`) holds the model's
index (backend, skeleton, tensor entries, which storages each chunk holds) as bytes,
and the chunks' ObjectRefs. Both are plain builtins, so a process without torch (the
holder actors of :mod:`ray_zerocopy_core.cluster`) can copy a stored model chunk by
chunk; only a process that rebuilds the model reads the index.

Why chunks: a node that is receiving a model forwards the chunks it holds while the
rest arrive, so a model reaches many nodes in about one transfer time; and a model read
from files is stored chunk by chunk, each chunk's file pages dropped once it is stored.
The chunk size is about 1/64 of the model, between :data:`MIN_CHUNK_BYTES` and
:data:`MAX_CHUNK_BYTES` (``RAY_ZEROCOPY_CHUNK_MIB`` sets it). Small enough that a chain
of K nodes fills in about one transfer time (the last node waits K chunk times more than
the first) and that the chunks in flight add little to a node's store; large enough
that each costs little: every chunk is a Ray object and a few calls between holders,
which is why the floor is 4 MiB (measured over 200 Mbit/s links, a 64 MiB model to a
chain of 2 and of 8 nodes: 3.7 s and 9.1 s in 1 MiB chunks, 3.4 s and 7.5 s in 4 MiB
chunks). A storage larger than a chunk is a chunk of its own, so a model made of a few
huge tensors pipelines more coarsely.

The process that puts the objects owns them (Ray's ownership model): they live while
their owner holds a reference, and loads fail with
:class:`~ray_zerocopy_core.errors.WeightsLostError` once the owner is gone. A model
stored by another ray-zerocopy release is refused with
:class:`~ray_zerocopy_core.errors.FormatVersionError`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import ray

from ray_zerocopy_core.errors import (
    FormatVersionError,
    InvalidReferenceError,
    ObjectStoreCapacityError,
    WeightsLostError,
)
from ray_zerocopy_core.memory import guarded
from ray_zerocopy_core.plugin import FORMAT_VERSION, RELEASE, ModelPayload
from ray_zerocopy_core.representation import TableChunk, TensorEntry, TensorTable, round_up

MIB = 1024**2
_GIB = 1024**3
#: Bounds of the chunk size chosen for a model (see the module doc).
MIN_CHUNK_BYTES = 4 * MIB
MAX_CHUNK_BYTES = 64 * MIB
#: Chunks per model aimed at, within those bounds.
CHUNKS_PER_MODEL = 64
#: The least bytes a stored chunk takes (its guards are made larger): Ray keeps a task's
#: results under 100 KiB in the caller's own memory instead of the shared store, where
#: loads would copy them; a chunk a holder's task streams must be in the store.
MIN_OBJECT_BYTES = 256 * 1024
#: Environment variable that fixes the chunk size, in MiB.
CHUNK_SIZE_ENV = "RAY_ZEROCOPY_CHUNK_MIB"


class StoredModel(TypedDict):
    """The value of a stored model's head object (plain builtins: holders read it without torch).

    ``index``: the pickled :class:`ModelIndex`; ``chunks``: one ObjectRef per chunk;
    ``nbytes``: the weight bytes; ``format_version`` and ``release``: who wrote it.
    """

    index: bytes
    chunks: list[ray.ObjectRef]
    nbytes: int
    format_version: int
    release: str


@dataclass(frozen=True)
class ModelIndex:
    """Everything of a stored model but its bytes: what a process needs to rebuild it from its chunks.

    Attributes:
        backend: the backend that made the payload and rebuilds it.
        backend_locator: ``module:qualname`` of that backend's class.
        skeleton: the backend's weightless bytes.
        entries: where each tensor lies in the storages.
        chunks: the storage indices each chunk holds, in order.
        nbytes: the weight bytes.
    """

    backend: str
    backend_locator: str
    skeleton: bytes
    entries: tuple[TensorEntry, ...]
    chunks: tuple[tuple[int, ...], ...]
    nbytes: int


def chunk_bytes(total: int) -> int:
    """The chunk size for a model of ``total`` weight bytes (see the module doc)."""
    configured = os.environ.get(CHUNK_SIZE_ENV)
    if configured:
        return max(1, int(float(configured) * MIB))
    return min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, round_up(total // CHUNKS_PER_MODEL, MIB)))


def plan_chunks(storages: Sequence[np.ndarray], target: int) -> tuple[tuple[int, ...], ...]:
    """Group storage indices, in order, into runs of about ``target`` bytes.

    A storage larger than ``target`` makes a chunk of its own, with the small storages
    before it: a chunk is never a small remnant, which would cost a whole object's
    minimum size (a bias between two large weights joins the next weight's chunk).
    """
    small = target // 4
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for index, storage in enumerate(storages):
        nbytes = round_up(int(storage.nbytes), 64)
        if current and size + nbytes > target and size >= small:
            chunks.append(current)
            current, size = [], 0
        current.append(index)
        size += nbytes
    if current:
        if chunks and size < small:
            chunks[-1] += current  # a small remnant joins the chunk before it
        else:
            chunks.append(current)
    return tuple(tuple(chunk) for chunk in chunks)


def _format_bytes(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB / 10 else f"{n / MIB:.1f} MiB"


def object_store_capacity() -> int | None:
    """The largest object store of any alive node in the cluster, in bytes (None if unknown)."""
    capacities = [node.get("Resources", {}).get("object_store_memory", 0) for node in ray.nodes() if node.get("Alive")]
    return int(max(capacities)) if capacities else None


def check_capacity(payload: ModelPayload, what: str) -> None:
    """Refuse up front a model that no node's object store can ever hold."""
    capacity = object_store_capacity()
    needed = payload.table.nbytes + len(payload.skeleton)
    if capacity is not None and needed > capacity:
        raise ObjectStoreCapacityError(
            f"The {what} needs {_format_bytes(needed)} in the object store, but the largest "
            f"node's object store holds {_format_bytes(capacity)}. Start Ray with a larger "
            "store (ray.init(object_store_memory=...) or `ray start --object-store-memory`), "
            "or shrink the model (e.g. bfloat16 weights)."
        )


def stored_parts(payload: ModelPayload) -> tuple[StoredModel, int, Iterator[tuple[np.ndarray, ...]]]:
    """The head of ``payload`` (its chunk refs still empty), its number of chunks, and the chunks one at a time.

    Each chunk is guarded (:func:`~ray_zerocopy_core.memory.guarded`).

    A payload read from files (:attr:`~ray_zerocopy_core.plugin.ModelPayload.reading`)
    is told which storages are stored next and which are stored, so it reads ahead and
    lets the pages of stored ones go.
    """
    table = payload.table
    layout = plan_chunks(table.storages, chunk_bytes(table.nbytes))
    index = ModelIndex(payload.backend, payload.backend_locator, payload.skeleton, table.entries, layout, table.nbytes)
    head = StoredModel(
        index=pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL),
        chunks=[],
        nbytes=table.nbytes,
        format_version=FORMAT_VERSION,
        release=RELEASE,
    )

    def chunks() -> Iterator[tuple[np.ndarray, ...]]:
        reading = payload.reading
        for position, storages in enumerate(layout):
            if reading is not None:
                if position == 0:
                    reading.read_ahead(storages)
                if position + 1 < len(layout):
                    reading.read_ahead(layout[position + 1])
            yield guarded(tuple(table.storages[s] for s in storages), at_least=MIN_OBJECT_BYTES)
            if reading is not None:
                reading.release(storages)

    return head, len(layout), chunks()


def put_payload(payload: ModelPayload, what: str = "model") -> ray.ObjectRef:
    """Store ``payload`` (each byte copied once into the object store); return its head's ObjectRef."""
    if not ray.is_initialized():
        ray.init()
    check_capacity(payload, what)
    head, _, chunks = stored_parts(payload)
    for chunk in chunks:
        head["chunks"].append(ray.put(chunk))
        del chunk
    return ray.put(head)


def fetch_stored(ref_or_value: Any) -> StoredModel:
    """The head behind an ObjectRef (or the head itself, if Ray already resolved it), version-checked."""
    if isinstance(ref_or_value, ray.ObjectRef):
        try:
            value = ray.get(ref_or_value)
        except _LOST as exc:
            raise _lost(exc) from exc
    else:
        value = ref_or_value
    if not (isinstance(value, dict) and {"index", "chunks", "format_version", "release"} <= set(value)):
        if isinstance(ref_or_value, ray.ObjectRef):
            raise InvalidReferenceError(
                f"The ObjectRef does not point to a ray-zerocopy model (it holds a {type(value).__qualname__}). "
                "Pass what the wrapper or prepare_model_for_actors() returned."
            )
        raise InvalidReferenceError(
            f"Expected a ray-zerocopy stored model (an ObjectRef, or its value), got {type(value).__qualname__}. "
            "Pass what the wrapper or prepare_model_for_actors() returned."
        )
    head: StoredModel = value  # type: ignore[assignment]
    check_versions(head)
    return head


def fetch_payload(ref_or_value: Any) -> ModelPayload:
    """The payload of a stored model, its storages read-only views of the chunks in this node's store.

    A payload that was never stored (a :class:`ModelPayload`) is returned as it is.
    """
    if isinstance(ref_or_value, ModelPayload):
        return ref_or_value
    head = fetch_stored(ref_or_value)
    index: ModelIndex = pickle.loads(head["index"])
    try:
        values = ray.get(list(head["chunks"]))
    except _LOST as exc:
        raise _lost(exc) from exc
    storages: list[np.ndarray] = [np.empty(0, np.uint8)] * sum(len(c) for c in index.chunks)
    chunks = []
    for positions, buffers in zip(index.chunks, values):
        for position, buffer in zip(positions, buffers[1:-1]):
            storages[position] = buffer
        chunks.append(TableChunk(positions, tuple(buffers)))
    table = TensorTable(index.entries, tuple(storages), index.nbytes, tuple(chunks))
    return ModelPayload(index.backend, index.skeleton, table, index.backend_locator)


#: Ray's errors for an object whose owner or node is gone.
_LOST = (ray.exceptions.OwnerDiedError, ray.exceptions.ObjectLostError, ray.exceptions.ObjectFetchTimedOutError)


def _lost(exc: BaseException) -> WeightsLostError:
    return WeightsLostError(
        "The shared model weights are no longer available: the process that stored them (their owner) "
        "has exited or released them, or their node died. Keep the wrapper alive in a long-lived process "
        "(the driver) while workers load it, or publish the model by name (ray_zerocopy.publish), whose "
        f"copies are owned on every node that holds one. ({exc})"
    )


def check_versions(head: StoredModel) -> None:
    """Raise :class:`FormatVersionError` if ``head`` was stored by another ray-zerocopy release."""
    if head["format_version"] != FORMAT_VERSION or head["release"] != RELEASE:
        raise FormatVersionError(
            f"This model was stored by ray-zerocopy {head['release']} (format {head['format_version']}), "
            f"but this worker runs ray-zerocopy {RELEASE} (format {FORMAT_VERSION}). Install the same "
            "ray-zerocopy release on the driver and on every worker (e.g. through the runtime_env or "
            "the cluster image), then wrap the model again."
        )
