"""The eager backend: ``torch.nn.Module`` (and any picklable object holding tensors).

The skeleton is the model pickled with its tensors factored out
(:mod:`ray_zerocopy_core.pickling`); rebuild unpickles it with zero-copy views of the
stored bytes in place of the tensors, so parameters that were one object are one
object again and views of one storage share it again.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ray_zerocopy_core import plugin


class NNBackend(plugin.Backend):
    """Backend for eager ``torch.nn.Module`` models.

    It handles every ``nn.Module``; the registry's MRO rule gives subclasses that have a
    backend of their own (``torch.jit.ScriptModule``) to that backend.
    """

    name: ClassVar[str] = "nn"
    model_types: ClassVar[tuple[type, ...]] = (nn.Module,)

    def extract(self, model: Any) -> plugin.ModelPayload:
        """Pickle ``model`` without its tensors; index the tensors' bytes (no copy)."""
        skeleton, tensors = self.split(model)
        names = [found[0] if found else f"#{i}" for i, (found, _) in enumerate(tensor_names(model, tensors))]
        return plugin.ModelPayload(self.name, skeleton, plugin.build_table(list(zip(names, tensors))))

    def split(self, model: Any) -> tuple[bytes, list[torch.Tensor]]:
        """The skeleton of ``model`` (pickled without its tensors) and its tensors in skeleton order.

        :meth:`extract` indexes these tensors; a checkpoint (:mod:`ray_zerocopy_core.checkpoint`)
        puts the files' tensors in their places instead.
        """
        try:
            return plugin.split_tensors(model)
        except Exception as exc:
            raise plugin.UnsupportedModelError(
                f"Could not pickle the model {type(model).__qualname__} without its weights: {exc}. "
                "Models must be picklable (as for ray.put); move unpicklable state "
                "(open files, locks, compiled functions) out of the module."
            ) from exc

    def rebuild(self, payload: plugin.ModelPayload, options: plugin.LoadOptions) -> Any:
        """Unpickle the skeleton with zero-copy tensors; eval mode, no grad."""
        tensors = plugin.materialize(payload.table, options)
        model = plugin.join_tensors(payload.skeleton, tensors)
        return plugin.finish_model(model)


def tensor_names(model: Any, tensors: list[torch.Tensor]) -> list[tuple[list[str], bool]]:
    """For each of ``tensors``: every name ``model`` gives it, and whether it is in the state dict.

    Names come from ``state_dict(keep_vars=True)`` first (parameters and persistent
    buffers, tied ones under each of their names), then from non-persistent buffers. A
    tensor that is not a module's parameter or buffer gets no name; so does every tensor of
    an object that is not an ``nn.Module``.
    """
    position = {id(t): i for i, t in enumerate(tensors)}
    names: list[list[str]] = [[] for _ in tensors]
    persistent = [False] * len(tensors)
    if isinstance(model, nn.Module):
        for name, tensor in model.state_dict(keep_vars=True).items():
            if id(tensor) in position:
                names[position[id(tensor)]].append(name)
                persistent[position[id(tensor)]] = True
        for name, tensor in model.named_buffers(remove_duplicate=False):
            i = position.get(id(tensor))
            if i is not None and name not in names[i]:
                names[i].append(name)
    return list(zip(names, persistent))
