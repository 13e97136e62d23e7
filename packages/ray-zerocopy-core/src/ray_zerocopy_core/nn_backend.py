"""The eager backend: ``torch.nn.Module`` (and any picklable object holding tensors).

The skeleton is the model pickled with its tensors factored out
(:mod:`ray_zerocopy_core.pickling`); rebuild unpickles it with zero-copy views of the
stored bytes in place of the tensors, so parameters that were one object are one
object again and views of one storage share it again. Tensor subclasses that implement
the traceable-subclass protocol (torchao's quantized tensors) are stored as their
inner tensors and rebuilt around them; ``torch.ao.quantization`` modules are refused.
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
        """Pickle ``model`` without its tensors; index the tensors' bytes (no copy).

        Raises:
            UnsupportedModelError: ``model`` holds what cannot be shared: a module of
                ``torch.ao.quantization`` (packed weights), a tensor that is not dense, or a
                tensor subclass without the traceable-subclass protocol.
        """
        refuse_packed_quantized(model)
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
        model = plugin.join_tensors(payload.skeleton, tensors, parameters=not options.use_fast_load)
        return plugin.finish_model(model)


def tensor_names(model: Any, tensors: list[torch.Tensor]) -> list[tuple[list[str], bool]]:
    """For each of ``tensors``: every name ``model`` gives it, and whether it is in the state dict.

    Names come from ``state_dict(keep_vars=True)`` first (parameters and persistent
    buffers, tied ones under each of their names), then from non-persistent buffers. The
    inner tensors of a tensor subclass (flattened by :func:`~ray_zerocopy_core.pickling.split_tensors`)
    are named after it and their attribute (``"0.weight.qdata"``), and are not themselves
    in the state dict. A tensor that is not a module's parameter or buffer gets no name;
    so does every tensor of an object that is not an ``nn.Module``.
    """
    position = {id(t): i for i, t in enumerate(tensors)}
    names: list[list[str]] = [[] for _ in tensors]
    persistent = [False] * len(tensors)

    def add(name: str, tensor: torch.Tensor, in_state_dict: bool) -> None:
        if plugin.is_flattenable(tensor):
            inner, _ = plugin.flatten_subclass(tensor)
            for attribute, value in inner.items():
                add(f"{name}.{attribute}", value, False)
            return
        i = position.get(id(tensor))
        if i is not None and name not in names[i]:
            names[i].append(name)
            persistent[i] = persistent[i] or in_state_dict

    if isinstance(model, nn.Module):
        for name, tensor in model.state_dict(keep_vars=True).items():
            add(name, tensor, True)
        for name, tensor in model.named_buffers(remove_duplicate=False):
            add(name, tensor, False)
    return list(zip(names, persistent))


#: Where the modules of ``torch.ao.quantization`` (and their older aliases) live.
_PACKED_QUANTIZED_MODULES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")


def refuse_packed_quantized(model: Any) -> None:
    """Refuse a model holding ``torch.ao.quantization`` modules, naming the first one and the torchao route.

    Their weights are packed by the quantized kernels (fbgemm, onednn, qnnpack) into
    memory each process allocates for itself when it unpickles them, so N workers would
    hold N packed copies whatever is shared; torchao's quantized tensors are plain
    tensors inside and share zero-copy.

    Raises:
        UnsupportedModelError: such a module is found.
    """
    if not isinstance(model, nn.Module):
        return
    for name, module in model.named_modules():
        kind = type(module).__module__
        if kind.startswith(_PACKED_QUANTIZED_MODULES):
            raise plugin.UnsupportedModelError(
                f"Module {name or '(the model itself)'!r} is {kind}.{type(module).__qualname__}, quantized with "
                "torch.ao.quantization. Its weights are packed for the quantized kernels into memory every "
                "process allocates for itself when it loads the model, so they cannot be shared zero-copy. "
                "Quantize the float model with torchao instead (torchao.quantization.quantize_ with "
                "Int8DynamicActivationInt8WeightConfig() in place of quantize_dynamic, or "
                "Int8WeightOnlyConfig()): its quantized weights share zero-copy. See the quantization guide."
            )
