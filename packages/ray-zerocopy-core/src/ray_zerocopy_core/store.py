"""Putting payloads into Ray's object store and getting them back, checked.

One Ray object per model, framed by guards for write protection
(:func:`~ray_zerocopy_core.memory.guard_table`). The process that puts it owns it
(Ray's ownership model): the object lives while its owner holds a reference (or, for
a model published by name, its holder actor: :mod:`ray_zerocopy_core.named`), and loads fail with
:class:`~ray_zerocopy_core.errors.WeightsUnavailableError` once the owner is gone. A
payload stored by another ray-zerocopy release is refused with
:class:`~ray_zerocopy_core.errors.FormatVersionError`.
"""

from __future__ import annotations

from typing import Any

import ray

from ray_zerocopy_core.errors import (
    FormatVersionError,
    InvalidReferenceError,
    ObjectStoreCapacityError,
    WeightsUnavailableError,
)
from ray_zerocopy_core.memory import guard_table
from ray_zerocopy_core.plugin import FORMAT_VERSION, RELEASE, ModelPayload

_GIB = 1024**3


def _format_bytes(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB / 10 else f"{n / 1024**2:.1f} MiB"


def object_store_capacity() -> int | None:
    """The largest object store of any alive node in the cluster, in bytes (None if unknown)."""
    capacities = [node.get("Resources", {}).get("object_store_memory", 0) for node in ray.nodes() if node.get("Alive")]
    return int(max(capacities)) if capacities else None


def put_payload(payload: ModelPayload, what: str = "model") -> ray.ObjectRef:
    """Write ``payload`` into the object store once; refuse up front if it can never fit."""
    if not ray.is_initialized():
        ray.init()
    return ray.put(stored_payload(payload, what))


def stored_payload(payload: ModelPayload, what: str = "model") -> ModelPayload:
    """``payload`` as it is stored (its table framed by guards), checked to fit the object store.

    :func:`put_payload` stores it; a task that returns or yields it stores it as its result.
    """
    capacity = object_store_capacity()
    needed = payload.table.nbytes + len(payload.skeleton)
    if capacity is not None and needed > capacity:
        raise ObjectStoreCapacityError(
            f"The {what} needs {_format_bytes(needed)} in the object store, but the largest "
            f"node's object store holds {_format_bytes(capacity)}. Start Ray with a larger "
            "store (ray.init(object_store_memory=...) or `ray start --object-store-memory`), "
            "or shrink the model (e.g. bfloat16 weights)."
        )
    return ModelPayload(payload.backend, payload.skeleton, guard_table(payload.table), payload.backend_locator)


def fetch_payload(ref_or_payload: Any) -> ModelPayload:
    """The payload behind an ObjectRef, or the payload itself if Ray already resolved it."""
    if isinstance(ref_or_payload, ModelPayload):
        return ref_or_payload
    if not isinstance(ref_or_payload, ray.ObjectRef):
        raise InvalidReferenceError(
            f"Expected a ray-zerocopy model reference (ObjectRef) or its resolved value, got "
            f"{type(ref_or_payload).__qualname__}. Pass what the wrapper or "
            "prepare_model_for_actors() returned."
        )
    try:
        payload = ray.get(ref_or_payload)
    except (
        ray.exceptions.OwnerDiedError,
        ray.exceptions.ObjectLostError,
        ray.exceptions.ObjectFetchTimedOutError,
    ) as exc:
        raise WeightsUnavailableError(
            "The shared model weights are no longer available: the process that wrapped "
            "the model (their owner) has exited or released them. Keep the wrapper alive in "
            "a long-lived process (the driver) while workers load it, or publish the model by name "
            f"(ray_zerocopy.publish) so that a detached holder owns it. ({exc})"
        ) from exc
    if not isinstance(payload, ModelPayload):
        raise InvalidReferenceError(
            f"The ObjectRef does not point to a ray-zerocopy model (it holds a "
            f"{type(payload).__qualname__}). Pass what the wrapper or prepare_model_for_actors() returned."
        )
    check_versions(payload)
    return payload


def check_versions(payload: ModelPayload) -> None:
    """Raise :class:`FormatVersionError` if ``payload`` was stored by another ray-zerocopy release."""
    if payload.format_version != FORMAT_VERSION or payload.release != RELEASE:
        raise FormatVersionError(
            f"This model was stored by ray-zerocopy {payload.release} (format {payload.format_version}), "
            f"but this worker runs ray-zerocopy {RELEASE} (format {FORMAT_VERSION}). Install the same "
            "ray-zerocopy release on the driver and on every worker (e.g. through the runtime_env or "
            "the cluster image), then wrap the model again."
        )
