"""Putting payloads into Ray's object store and getting models back out.

One Ray object per model. The process that puts it owns it (Ray's ownership model):
the object lives while that process holds a reference, and loads fail with
:class:`~ray_zerocopy_core.errors.WeightsUnavailableError` once the owner is gone.
"""

from __future__ import annotations

from typing import Any

import ray

from ray_zerocopy_core.backend import LoadOptions, ModelPayload
from ray_zerocopy_core.errors import ObjectStoreCapacityError, WeightsUnavailableError
from ray_zerocopy_core.memory import guard_table
from ray_zerocopy_core.registry import get_backend

_GIB = 1024**3


def _format_bytes(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB / 10 else f"{n / 1024**2:.1f} MiB"


def object_store_capacity() -> int | None:
    """The largest object store of any alive node in the cluster, in bytes (None if unknown)."""
    capacities = [node.get("Resources", {}).get("object_store_memory", 0) for node in ray.nodes() if node.get("Alive")]
    return int(max(capacities)) if capacities else None


def put_payload(payload: ModelPayload, what: str = "model", owner: Any = None) -> ray.ObjectRef:
    """Write ``payload`` into the object store once; refuse up front if it can never fit.

    ``owner`` (an actor handle) makes that actor own the object instead of the calling
    process, so the weights outlive the caller (see Ray's ``ray.put(_owner=...)``).
    """
    if not ray.is_initialized():
        ray.init()
    capacity = object_store_capacity()
    needed = payload.nbytes + len(payload.skeleton)
    if capacity is not None and needed > capacity:
        raise ObjectStoreCapacityError(
            f"The {what} needs {_format_bytes(needed)} in the object store, but the largest "
            f"node's object store holds {_format_bytes(capacity)}. Start Ray with a larger "
            "store (ray.init(object_store_memory=...) or `ray start --object-store-memory`), "
            "or shrink the model (e.g. bfloat16 weights)."
        )
    stored = ModelPayload(payload.backend, payload.skeleton, guard_table(payload.table), payload.backend_locator)
    if owner is not None:
        return ray.put(stored, _owner=owner)
    return ray.put(stored)


def fetch_payload(ref_or_payload: Any) -> ModelPayload:
    """The payload behind an ObjectRef, or the payload itself if Ray already resolved it."""
    if isinstance(ref_or_payload, ModelPayload):
        return ref_or_payload
    if not isinstance(ref_or_payload, ray.ObjectRef):
        raise TypeError(
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
            f"a long-lived process (the driver, or a detached holder actor) while workers load it. ({exc})"
        ) from exc
    if not isinstance(payload, ModelPayload):
        raise TypeError(
            f"The ObjectRef does not point to a ray-zerocopy model (it holds a "
            f"{type(payload).__qualname__}). Pass what the wrapper or prepare_model_for_actors() returned."
        )
    return payload


def rebuild_model(ref_or_payload: Any, options: LoadOptions) -> Any:
    """Fetch a stored model and rebuild it with the backend that stored it."""
    payload = fetch_payload(ref_or_payload)
    return get_backend(payload.backend, locator=payload.backend_locator or None).rebuild(payload, options)
