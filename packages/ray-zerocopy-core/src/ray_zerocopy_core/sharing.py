"""Sharing one model and rebuilding it: the backend's split, stored once; fetched and rebuilt.

The floor between the store and the execution modes: :func:`share_model` asks the
model's backend for its payload and stores it; :func:`rebuild_model` fetches a stored
payload and asks the backend that made it to rebuild it.
"""

from __future__ import annotations

from typing import Any

import ray

from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.plugin import Backend
from ray_zerocopy_core.registry import backend_locator, get_backend
from ray_zerocopy_core.store import fetch_payload, put_payload


def share_model(model: Any, backend: Backend, what: str = "model") -> tuple[ray.ObjectRef, int]:
    """Store ``model`` as ``backend`` splits it; return its ObjectRef and its weight bytes."""
    payload = backend.extract(model)
    payload.backend_locator = backend_locator(backend)
    return put_payload(payload, what=what), payload.table.nbytes


def rebuild_model(ref_or_payload: Any, options: LoadOptions) -> Any:
    """Fetch a stored model and rebuild it with the backend that stored it."""
    payload = fetch_payload(ref_or_payload)
    return get_backend(payload.backend, locator=payload.backend_locator or None).rebuild(payload, options)
