"""Sharing one model and rebuilding it: the backend's split, stored once; fetched and rebuilt.

The floor between the store and the execution modes: :func:`share_model` asks the
model's backend for its payload and stores it; :func:`rebuild_model` fetches a stored
payload and asks the backend that made it to rebuild it. A
:class:`~ray_zerocopy_core.checkpoint.Checkpoint` stands for a model here: it is
stored as the eager backend stores modules, its bytes read straight from its files.
"""

from __future__ import annotations

from typing import Any

import ray

from ray_zerocopy_core.checkpoint import Checkpoint
from ray_zerocopy_core.checkpoint.reader import CheckpointReader
from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.plugin import Backend, ModelPayload
from ray_zerocopy_core.registry import backend_for, backend_locator, find_backend, get_backend
from ray_zerocopy_core.store import fetch_payload, put_payload


def model_backend(value: Any) -> Backend | None:
    """The backend that shares ``value`` (a checkpoint: the eager one), or None if it is no model."""
    return get_backend(NNBackend.name) if isinstance(value, Checkpoint) else find_backend(value)


def require_backend(value: Any) -> Backend:
    """As :func:`model_backend`, but an object no backend takes raises ``BackendError``."""
    return get_backend(NNBackend.name) if isinstance(value, Checkpoint) else backend_for(value)


def share_model(model: Any, backend: Backend, what: str = "model") -> tuple[ray.ObjectRef, int]:
    """Store ``model`` as ``backend`` splits it; return its ObjectRef and its weight bytes.

    A checkpoint's bytes are copied from its files into the store once; the files are
    unmapped and their cached pages dropped before this returns.
    """
    if isinstance(model, Checkpoint):
        with CheckpointReader(model) as reader:
            return _store(reader.payload(), backend, what)  # no view of the files outlives the put
    return _store(backend.extract(model), backend, what)


def _store(payload: ModelPayload, backend: Backend, what: str) -> tuple[ray.ObjectRef, int]:
    payload.backend_locator = backend_locator(backend)
    return put_payload(payload, what=what), payload.table.nbytes


def rebuild_model(ref_or_payload: Any, options: LoadOptions) -> Any:
    """Fetch a stored model and rebuild it with the backend that stored it."""
    payload = fetch_payload(ref_or_payload)
    return get_backend(payload.backend, locator=payload.backend_locator or None).rebuild(payload, options)
