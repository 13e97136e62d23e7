"""Reading a :class:`~ray_zerocopy_core.checkpoint.Checkpoint` into a payload whose weight bytes are views of its files.

1. the module is built with its **parameters on the ``meta`` device** (no memory, no
   random init) and its buffers real, as the constructor makes them (small; the files
   may not hold them: rotary ``inv_freq``, ``position_ids``...);
2. the eager backend's skeleton is taken from that module, so the stored model is
   rebuilt exactly like one wrapped from memory (ties included: one tensor);
3. in each parameter's place goes a read-only view of its bytes in the mapped files
   (:mod:`ray_zerocopy_core.checkpoint.files`); Ray copies them from the page cache
   into the object store, the one full copy; then the files' cached pages are dropped.

Tensors that must be computed (``dtype`` conversion, transformers conversions that
fuse or split tensors) are written one at a time to a temporary spool file and mapped
back, so private memory never holds more than one of them.

Quantized weights (torchao's tensor subclasses, as ``torch.save`` or ``save_pretrained``
with a ``TorchAoConfig`` wrote them) are put into the module in place of its meta
parameters before step 2, so the skeleton records them as subclasses and their inner
tensors, views of the files, are stored like any weight.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ray_zerocopy_core.checkpoint.files import CheckpointFiles, ConversionSpool, FileTensor
from ray_zerocopy_core.checkpoint.huggingface import KeyConversion, build_transformers_model, transformers_class
from ray_zerocopy_core.checkpoint.pacing import FilePacing
from ray_zerocopy_core.errors import CheckpointError
from ray_zerocopy_core.nn_backend import NNBackend, tensor_names
from ray_zerocopy_core.plugin import ModelPayload, build_table, is_flattenable

if TYPE_CHECKING:
    from ray_zerocopy_core.checkpoint import Checkpoint


@contextlib.contextmanager
def read_payload(checkpoint: Checkpoint) -> Iterator[ModelPayload]:
    """The model ``checkpoint`` describes, as the eager backend stores it, its bytes views of the files.

    The files stay mapped until the block ends; then they are unmapped and their cached
    pages dropped. Store the payload inside the block and keep no view of it after.
    """
    with CheckpointReader(checkpoint) as reader:
        yield reader.payload()


@contextlib.contextmanager
def local_directory(path: Any) -> Iterator[Path]:
    """The local path of a checkpoint location (a ``ray.train.Checkpoint`` is made local while used)."""
    if callable(getattr(path, "as_directory", None)):  # ray.train.Checkpoint (which refuses os.fspath)
        with path.as_directory() as directory:
            yield Path(directory)
    else:
        yield Path(os.fspath(path))


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """While active, every parameter a module registers is moved to the ``meta`` device.

    Buffers stay real: their values are what the constructor computes, which the files
    may not hold. Initialization code then runs on meta tensors and costs nothing.
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = type(param)(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_module_on_meta(checkpoint: Checkpoint, location: Path) -> tuple[nn.Module, KeyConversion | None]:
    """The checkpoint's module with parameters on ``meta``, and its key conversion (transformers only)."""
    cls = transformers_class(checkpoint.model)
    if cls is not None:
        directory = location if location.is_dir() else location.parent
        model = build_transformers_model(cls, directory, checkpoint.dtype, parameters_on_meta)
        return model, KeyConversion.for_model(model)
    factory = checkpoint.model
    assert callable(factory)
    try:
        with parameters_on_meta():
            model = factory()
    except CheckpointError:
        raise
    except Exception as exc:
        message = f"The checkpoint's model factory {factory!r} failed: {type(exc).__name__}: {exc}"
        raise CheckpointError(message) from exc
    if not isinstance(model, nn.Module) or isinstance(model, torch.jit.ScriptModule):
        raise CheckpointError(
            f"The checkpoint's model factory {factory!r} returned a {type(model).__qualname__}; it must return "
            "an eager torch.nn.Module (the module the checkpoint's state dict belongs to)."
        )
    return model, None


@dataclass
class _Slot:
    """One tensor of the module: its names, its built value, and what will fill it."""

    names: list[str]
    built: torch.Tensor
    is_parameter: bool
    persistent: bool
    source: FileTensor | None = None
    spooled: int | None = None  # position in the conversion spool, when computed


class CheckpointReader:
    """Reads a :class:`Checkpoint` into a payload whose weight bytes are views of the files.

    Use as a context manager; drop every reference to the payload (after storing it)
    before the block ends, so that the files can be unmapped and their cache dropped::

        with CheckpointReader(checkpoint) as reader:
            payload = reader.payload()
            ref = put_payload(payload)
            del payload
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint
        self._placed: set[str] = set()
        self._stack = contextlib.ExitStack()
        self._spool = ConversionSpool()
        self._stack.callback(self._spool.close)
        try:
            location = self._stack.enter_context(local_directory(checkpoint.path))
            self.files = CheckpointFiles(location)
            self._stack.callback(self.files.close)
            self.module, self.conversion = build_module_on_meta(checkpoint, location)
        except BaseException:
            self._stack.close()
            raise

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the files, drop their page cache, remove the spool."""
        self.module = None  # type: ignore[assignment]
        self._stack.close()

    def payload(self) -> ModelPayload:
        """The model as the eager backend stores it, with the files' bytes in place of its tensors."""
        self._placed = self._place_subclasses()
        skeleton, tensors = NNBackend().split(self.module)
        slots = self._slots(tensors)
        self._fill_from_files(slots)
        self._check_complete(slots)
        self._convert_built(slots)
        views = self._spool.tensors()
        named = []
        for slot in slots:
            if slot.spooled is not None:
                tensor = views[slot.spooled]
            else:
                tensor = slot.source.tensor if slot.source is not None else slot.built
            if slot.is_parameter:
                tensor = nn.Parameter(tensor, requires_grad=False)
            named.append((slot.names[0] if slot.names else "?", tensor))
        table = build_table(named)
        pacing = FilePacing(table.storages, [*self.files.paths, *self._spool.descriptors()])
        self._stack.callback(pacing.close)
        return ModelPayload(NNBackend.name, skeleton, table, reading=pacing)

    # --- the steps of payload() --------------------------------------------------------

    def _place_subclasses(self) -> set[str]:
        """Put each tensor subclass of the files (a quantized weight) into the module; the file keys placed.

        The skeleton is taken after, so it records each subclass's type and context and its
        inner tensors, views of the files, become table entries like any tensor. Every place
        that held the built tensor (tied weights) gets the one subclass object.
        """
        placed: set[str] = set()
        expected = self.module.state_dict(keep_vars=True)
        for key, found in self.files.tensors.items():
            if not is_flattenable(found.tensor):
                continue
            target, pattern = self.conversion.target(key) if self.conversion else (key, None)
            where = f"{str(found.path)!r}"
            kind = type(found.tensor).__qualname__
            if pattern is not None:
                raise CheckpointError(
                    f"Tensor {key!r} in {where} is a quantized {kind}, but transformers converts it with others "
                    f"into {target!r} (fusing or splitting their values), which quantized tensors do not allow. "
                    "Quantize after the conversion: load the float checkpoint, quantize, and wrap the model."
                )
            built = expected.get(target)
            if built is None:
                continue  # not the model's: _fill_from_files reports it, or skips it with strict=False
            if self.checkpoint.dtype is not None:
                raise CheckpointError(
                    f"The checkpoint {self.checkpoint} holds quantized tensors ({key!r} is a {kind}), whose dtype "
                    f"cannot be converted while sharing, but dtype={self.checkpoint.dtype} was asked. Drop dtype= "
                    "(the files' dtypes are kept), or quantize a model of that dtype and save it."
                )
            if tuple(found.tensor.shape) != tuple(built.shape) or found.tensor.dtype != built.dtype:
                raise CheckpointError(
                    f"Tensor {key!r} in {where} is a {kind} of shape {list(found.tensor.shape)} and dtype "
                    f"{found.tensor.dtype}, but the model's {target!r} has shape {list(built.shape)} and dtype "
                    f"{built.dtype}. The files belong to another configuration of the model: build the module "
                    "with the configuration (and dtype) the checkpoint was saved from."
                )
            value: Any = (
                nn.Parameter(found.tensor, requires_grad=False) if isinstance(built, nn.Parameter) else found.tensor
            )
            for module in self.module.modules():
                for places in (module._parameters, module._buffers):
                    for name in [name for name, held in places.items() if held is built]:
                        places[name] = value
            placed.add(key)
        return placed

    def _slots(self, tensors: list[torch.Tensor]) -> list[_Slot]:
        return [
            _Slot(names, tensor, isinstance(tensor, nn.Parameter), persistent)
            for tensor, (names, persistent) in zip(tensors, tensor_names(self.module, tensors))
        ]

    def _fill_from_files(self, slots: list[_Slot]) -> None:
        by_name = {name: slot for slot in slots if slot.persistent for name in slot.names}
        unexpected: list[FileTensor] = []
        for key, found in self.files.tensors.items():
            if key in self._placed:
                continue
            target, pattern = self.conversion.target(key) if self.conversion else (key, None)
            if target not in by_name:
                if not (self.conversion and self.conversion.is_ignored(key)):
                    unexpected.append(found)
                continue
            if pattern is not None and self.conversion is not None:
                self.conversion.collect(target, key, pattern, found.tensor)
                continue
            slot = by_name[target]
            if slot.source is None:  # tied names: the first the files hold wins, as ties are made again
                slot.source = found
        if unexpected and self.checkpoint.strict:
            listed = ", ".join(f"{t.key!r} (in {t.path.name})" for t in unexpected[:5])
            more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
            raise CheckpointError(
                f"The checkpoint {self.checkpoint} holds {len(unexpected)} tensors the model does not have: "
                f"{listed}{more}. Check that the model matches the files, or pass strict=False to skip them."
            )
        for slot in slots:
            if slot.source is not None:
                self._check_source(slot, slot.source)
        if self.conversion is not None:
            for target, tensor in self.conversion.convert_groups():
                converted_slot = by_name.get(target)
                if converted_slot is None:
                    continue
                self._check_shape(converted_slot, target, tensor.shape, "transformers' conversion")
                converted_slot.spooled = self._spool.add(tensor, self._target_dtype(tensor, converted_slot))
                del tensor

    def _check_shape(self, slot: _Slot, key: str, shape: torch.Size, where: str) -> None:
        if tuple(shape) != tuple(slot.built.shape):
            raise CheckpointError(
                f"Tensor {key!r} from {where} has shape {list(shape)}, but the model's {slot.names[0]!r} has "
                f"shape {list(slot.built.shape)}. The files belong to another configuration of the model: "
                "build the module with the configuration the checkpoint was saved from."
            )

    def _check_source(self, slot: _Slot, found: FileTensor) -> None:
        where = f"{str(found.path)!r}"
        self._check_shape(slot, found.key, found.tensor.shape, where)
        file_dtype, model_dtype = found.tensor.dtype, slot.built.dtype
        if file_dtype.is_floating_point != model_dtype.is_floating_point or (
            not file_dtype.is_floating_point and file_dtype != model_dtype
        ):
            raise CheckpointError(
                f"Tensor {found.key!r} in {where} is {file_dtype}, but the model's {slot.names[0]!r} is "
                f"{model_dtype}: the files do not belong to this model."
            )
        target = self.checkpoint.dtype if self.checkpoint.dtype and file_dtype.is_floating_point else model_dtype
        if file_dtype != target:
            if self.checkpoint.dtype is None:
                raise CheckpointError(
                    f"Tensor {found.key!r} in {where} is {file_dtype}, but the model builds {slot.names[0]!r} "
                    f"as {model_dtype}. Pass Checkpoint(..., dtype={file_dtype}) to keep the files' dtype, or "
                    f"dtype={model_dtype} to convert while sharing."
                )
            slot.spooled = self._spool.add(found.tensor, target)

    def _target_dtype(self, tensor: torch.Tensor, slot: _Slot) -> torch.dtype:
        target = self.checkpoint.dtype or slot.built.dtype
        return target if tensor.is_floating_point() else tensor.dtype

    def _check_complete(self, slots: list[_Slot]) -> None:
        missing = [
            slot
            for slot in slots
            if slot.source is None
            and slot.spooled is None
            and (slot.built.device.type == "meta" or (slot.persistent and self.checkpoint.strict))
        ]
        if missing:
            names = [slot.names[0] if slot.names else "(unnamed tensor)" for slot in missing]
            listed = ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            files = ", ".join(p.name for p in self.files.paths)
            raise CheckpointError(
                f"The checkpoint {self.checkpoint} lacks {len(missing)} tensors the model needs: {listed} "
                f"(files: {files}). Check that the model matches the files (a missing shard, another "
                "architecture?); strict=False keeps built buffers but parameters must be in the files."
            )

    def _convert_built(self, slots: list[_Slot]) -> None:
        """Built buffers follow ``.to(dtype)`` for a factory (transformers builds in the dtype already)."""
        dtype = self.checkpoint.dtype
        if dtype is None or self.conversion is not None:
            return
        for slot in slots:
            if slot.source is None and slot.spooled is None and slot.built.is_floating_point():
                slot.built = slot.built.to(dtype)
