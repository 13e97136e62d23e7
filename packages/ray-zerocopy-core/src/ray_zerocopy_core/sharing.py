"""Sharing one model and rebuilding it: its backend's payload, stored once; fetched and rebuilt.

:func:`share_model` opens a model (or a :class:`~ray_zerocopy_core.plugin.ModelSource`
such as a checkpoint) into its backend's payload and stores it; :func:`rebuild_model`
fetches a stored payload and asks the backend that made it to rebuild it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import ray

from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.plugin import Backend, ModelPayload, open_payload
from ray_zerocopy_core.registry import backend_locator, get_backend
from ray_zerocopy_core.store import fetch_payload, put_payload


def located(payload: ModelPayload, backend: Backend) -> ModelPayload:
    """``payload`` with the locator of the backend that made it, so a worker imports that backend directly."""
    return replace(payload, backend_locator=backend_locator(backend))


def share_model(model: Any, backend: Backend, what: str = "model") -> tuple[ray.ObjectRef, int]:
    """Store ``model`` as ``backend`` opens it; return its ObjectRef and its weight bytes.

    A source's views (a checkpoint's mapped files) live only while it is stored: the
    files are unmapped and their cached pages dropped before this returns.
    """
    with open_payload(backend, model) as payload:
        return put_payload(located(payload, backend), what=what), payload.table.nbytes


def rebuild_model(ref_or_payload: Any, options: LoadOptions) -> Any:
    """Fetch a stored model and rebuild it with the backend that stored it."""
    payload = fetch_payload(ref_or_payload)
    return get_backend(payload.backend, locator=payload.backend_locator or None).rebuild(payload, options)
