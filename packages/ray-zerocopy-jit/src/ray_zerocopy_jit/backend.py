"""The TorchScript backend: a weightless ``torch.jit.save`` archive plus swapped-in tensors.

Extraction saves the ScriptModule with every parameter, buffer and tensor attribute
temporarily replaced by a one-element placeholder, so the archive holds the code and
structure but no weight bytes; the real tensors go into the shared
:class:`~ray_zerocopy_core.representation.TensorTable`, as for the eager backend.
Rebuild loads the archive and sets each slot to its zero-copy tensor, so the loaded
module's weights alias the object store.

Frozen modules (``torch.jit.freeze``, ``torch.jit.optimize_for_inference``) keep their
weights as graph constants, which cannot be swapped: they are refused with
:class:`~ray_zerocopy_core.errors.UnsupportedModelError`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple
from functools import reduce
from typing import Any, ClassVar

import torch

from ray_zerocopy_core.plugin import (
    Backend,
    LoadOptions,
    ModelPayload,
    TensorSlot,
    UnsupportedModelError,
    build_table,
    finish_model,
    index_tensors,
    materialize,
)

logger = logging.getLogger(__name__)

#: Name of the archive's extra file that lists the swapped slots.
SLOTS_FILE = "ray_zerocopy_slots.json"

#: Tensor bytes left inside the archive (graph constants, tensors in containers) above
#: which extraction warns that every worker will load its own copy of them.
INLINED_WARNING_BYTES = 64 * 1024

#: The deprecation warnings torch emits from the calls this backend makes for itself
#: (torch 2.13 as ``DeprecationWarning``, 2.14 as ``FutureWarning``; 2.4 emits none).
#: Only these exact messages are silenced, and only around our own calls.
_OWN_CALL_WARNINGS = tuple(
    f"`torch.jit.{call}` is {state}. Please switch to `torch.export`."
    for call in ("save", "load")
    for state in ("deprecated", "not supported in Python 3.14+ and may break")
)


@contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence torch's deprecation warnings for ``torch.jit.save``/``load`` in this block only."""
    with warnings.catch_warnings():
        for message in _OWN_CALL_WARNINGS:
            for category in (DeprecationWarning, FutureWarning):
                warnings.filterwarnings("ignore", message=re.escape(message) + r"\Z", category=category)
        yield


def _submodule(root: torch.jit.ScriptModule, path: str) -> Any:
    return reduce(getattr, path.split("."), root) if path else root


def _tensor_attributes(module: torch.jit.ScriptModule) -> Iterator[tuple[str, torch.Tensor, bool]]:
    """``(name, tensor, is_parameter)`` for every tensor attribute of ``module`` itself."""
    parameters = dict(module.named_parameters(recurse=False))
    attributes: list[tuple[str, Any]] = [*parameters.items(), *module.named_buffers(recurse=False)]
    module_iterators = getattr(torch._C, "_jit_debug_module_iterators", None)
    if module_iterators is not None:  # also finds plain tensor attributes of scripted modules
        attributes = list(module_iterators(module._c)["named_attributes"])
    for name, value in attributes:
        if isinstance(value, torch.Tensor):
            yield name, value, name in parameters


def find_slots(model: torch.jit.ScriptModule) -> tuple[list[TensorSlot], list[tuple[str, torch.Tensor]]]:
    """The tensor slots of ``model`` (nested submodules too) and its distinct tensors.

    A slot's ``where`` is its submodule's dotted path (``""`` for the root). A tensor
    reachable from several slots (tied weights, shared submodules) is listed once; its
    slots share its index.
    """
    return index_tensors(
        (path, name, tensor, is_parameter)
        for path, module in model.named_modules()
        for name, tensor, is_parameter in _tensor_attributes(module)
    )


def _placeholder(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor of ``tensor``'s dtype, shape and device backed by a single element."""
    return torch.zeros((), dtype=tensor.dtype, device=tensor.device).expand(tensor.shape)


def _set_slot(model: torch.jit.ScriptModule, slot: TensorSlot, value: torch.Tensor) -> None:
    try:
        setattr(_submodule(model, slot.where), slot.name, value)
    except Exception as exc:
        raise UnsupportedModelError(
            f"Could not set tensor {slot.qualified_name!r} of the ScriptModule: {exc}. "
            "The jit backend shares scripted or traced modules whose weights are attributes; "
            "script or trace the model again, or share the eager nn.Module instead."
        ) from exc


def save_skeleton(model: torch.jit.ScriptModule, slots: list[TensorSlot]) -> bytes:
    """``torch.jit.save`` bytes of ``model`` with every slot holding a placeholder.

    The slots are restored before returning, even on error. The model is briefly
    modified in place: do not run it from another thread meanwhile.
    """
    originals = [getattr(_submodule(model, s.where), s.name) for s in slots]
    replaced: list[tuple[TensorSlot, torch.Tensor]] = []
    buffer = io.BytesIO()
    slot_file = json.dumps([astuple(s) for s in slots])
    try:
        for slot, original in zip(slots, originals):
            _set_slot(model, slot, _placeholder(original))
            replaced.append((slot, original))
        with quiet_torchscript_deprecation():
            torch.jit.save(model, buffer, _extra_files={SLOTS_FILE: slot_file})
    finally:
        for slot, original in reversed(replaced):
            _set_slot(model, slot, original)
    return buffer.getvalue()


def inlined_tensor_bytes(archive: bytes) -> int:
    """Bytes of tensor storage inside a TorchScript archive (attributes and constants)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        return sum(
            info.file_size for info in zipped.infolist() if "/data/" in info.filename or "/constants/" in info.filename
        )


def _check_not_frozen(model: torch.jit.ScriptModule) -> None:
    if not model._c.hasattr("training"):
        raise UnsupportedModelError(
            "This ScriptModule is frozen (torch.jit.freeze or torch.jit.optimize_for_inference): "
            "its weights are inlined as graph constants, which cannot be shared zero-copy; every "
            "worker would load its own copy. Wrap the module before freezing it (the one you "
            "passed to torch.jit.freeze), or share the eager nn.Module."
        )


class JITBackend(Backend):
    """Backend for ``torch.jit.ScriptModule`` models (scripted, traced or loaded with ``torch.jit.load``).

    Example::

        backend = JITBackend()
        payload = backend.extract(torch.jit.trace(model, example))
        rebuilt = backend.rebuild(payload, LoadOptions())   # weights alias payload.table
    """

    name: ClassVar[str] = "jit"
    model_types: ClassVar[tuple[type, ...]] = (torch.jit.ScriptModule,)

    def extract(self, model: Any) -> ModelPayload:
        """Save ``model``'s code without weights; index its tensors' bytes (no copy).

        The weights are swapped out of ``model`` while it is saved and put back before
        this returns; do not run the model from another thread meanwhile.

        Raises:
            UnsupportedModelError: ``model`` is frozen, or holds a tensor that cannot be
                shared (meta, sparse, quantized...).
        """
        _check_not_frozen(model)
        slots, tensors = find_slots(model)
        table = build_table(tensors)
        skeleton = save_skeleton(model, slots)
        placeholder_bytes = sum(tensors[slot.index][1].element_size() for slot in slots)
        inlined = inlined_tensor_bytes(skeleton) - placeholder_bytes
        if inlined >= INLINED_WARNING_BYTES:
            warnings.warn(
                f"{inlined / 1024**2:.2f} MiB of tensors in this ScriptModule are graph constants "
                "(or inside lists/dicts), not attributes: they cannot be shared, and every worker "
                "will load its own copy. Keep large tensors as parameters or buffers to share them.",
                UserWarning,
                stacklevel=2,
            )
        logger.debug(
            "jit skeleton: %d bytes, %d slots, %d bytes left in the archive", len(skeleton), len(slots), inlined
        )
        return ModelPayload(self.name, skeleton, table)

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Load the skeleton and swap in zero-copy tensors; eval mode, no grad."""
        extra_files = {SLOTS_FILE: ""}
        map_location = options.device if options.device is not None else "cpu"
        with quiet_torchscript_deprecation():
            model = torch.jit.load(io.BytesIO(payload.skeleton), map_location=map_location, _extra_files=extra_files)
        slots = [TensorSlot(*row) for row in json.loads(extra_files[SLOTS_FILE])]
        parameters = () if options.use_fast_load else {slot.index for slot in slots if slot.is_parameter}
        tensors = materialize(payload.table, options, parameters=parameters)
        for slot in slots:
            _set_slot(model, slot, tensors[slot.index])
        return finish_model(model)
