"""The plugin SDK: everything a backend needs from core, and nothing else.

A backend (``nn`` in core, ``jit`` and ``export`` in their own distributions, or a
third party's) imports only this module from ``ray_zerocopy_core``. A backend splits
one model into a weightless skeleton plus a :class:`TensorTable`
(:func:`build_table` indexes the tensors without copying them), and rebuilds a model
from a :class:`ModelPayload` (:func:`materialize` turns the table back into tensors the
way the :class:`LoadOptions` ask: zero-copy and write-protected by default).

Example: a backend for a plain dict of tensors::

    class DictBackend:
        name = "dict"
        model_types = (dict,)

        def handles(self, obj):
            return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())

        def extract(self, model):
            names = list(model)
            return ModelPayload(self.name, json.dumps(names).encode(), build_table(list(model.items())))

        def rebuild(self, payload, options):
            names = json.loads(payload.skeleton)
            return dict(zip(names, materialize(payload.table, options)))

Declare it under the entry-point group ``ray_zerocopy.backends`` (see
:data:`ENTRY_POINT_GROUP`) and core finds it; nothing in core changes.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ray_zerocopy_core.backend import Backend, LoadOptions, ModelPayload
from ray_zerocopy_core.errors import UnsupportedModelError, ZeroCopyError
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.representation import TensorEntry, TensorTable, build_table, check_shareable
from ray_zerocopy_core.skeleton import join_tensors, split_tensors

#: The entry-point group under which distributions declare backends (``name = "module:Class"``).
ENTRY_POINT_GROUP = "ray_zerocopy.backends"


def finish_model(model: Any, options: LoadOptions) -> Any:
    """Put a rebuilt module in eval mode (:func:`materialize` already made its parameters grad-free).

    Backends call this last in ``rebuild``; objects that are not ``nn.Module`` pass through.
    """
    if isinstance(model, nn.Module):
        model.eval()
    return model


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "LoadOptions",
    "ModelPayload",
    "TensorEntry",
    "TensorTable",
    "UnsupportedModelError",
    "ZeroCopyError",
    "build_table",
    "check_shareable",
    "finish_model",
    "join_tensors",
    "materialize",
    "split_tensors",
]
