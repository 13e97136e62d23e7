"""The shared representation: a model's tensors as raw bytes plus a small index.

Extraction groups tensors by the storage they live in, so tied and otherwise shared
weights are written once. Each storage's bytes travel as a ``uint8`` numpy view of the
original memory (no copy on the driver); Ray's pickle-5 out-of-band path writes each
byte into the object store once, and a worker maps it back without copying. Rebuild
reinterprets those bytes with ``Tensor.view(dtype)``, so every torch dtype works,
including the ones numpy lacks (bfloat16, float8).

Alignment: every buffer starts at a multiple of :data:`ALIGNMENT` (64) bytes inside a
stored object, whatever the dtypes. Ray aligns out-of-band buffers of 2 KiB and more to
64 bytes but smaller ones to 8 only, so storages under :data:`SMALL_STORAGE_BYTES` are
copied into one shared *pack* (each at a 64-byte offset, the pack at least that size):
a few KiB copied per model, never the large weights. Spans that start inside a storage
are widened down to a 64-byte boundary, so offsets keep their alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ray_zerocopy_core.errors import UnsupportedModelError, ZeroCopyError

#: Every storage starts at a multiple of this many bytes (the largest element size is 16).
ALIGNMENT = 64
#: Storages smaller than this are packed together into one buffer (see the module doc).
SMALL_STORAGE_BYTES = 4096
#: The tensor types stored as they are (``torch.nn.Buffer`` exists from torch 2.5 on).
PLAIN_TENSOR_TYPES: tuple[type, ...] = (torch.Tensor, torch.nn.Parameter)
if hasattr(torch.nn, "Buffer"):
    PLAIN_TENSOR_TYPES += (torch.nn.Buffer,)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's elements lie in the stored bytes and how to read them.

    ``byte_offset`` counts from the start of storage buffer ``storage``; ``stride`` is
    in elements, as in :meth:`torch.Tensor.stride`.
    """

    storage: int
    byte_offset: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    is_parameter: bool
    requires_grad: bool


@dataclass(frozen=True)
class TableChunk:
    """A run of a stored table's storages, as one object of Ray's store holds them.

    Attributes:
        storages: the indices of the storages it holds, in order.
        buffers: its buffers as stored: a zero-filled guard, those storages, a guard
            (see :mod:`ray_zerocopy_core.memory` for why the guards are there).
    """

    storages: tuple[int, ...]
    buffers: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class TensorTable:
    """Tensors of one model as storage buffers plus an index; small to pickle but the bytes.

    ``nbytes`` counts the tensors' bytes (shared storage once), without alignment and
    packing slack. A table fetched from the object store also has its ``chunks``: where
    the storages lie in the stored objects (empty for a table that never left its process).
    """

    entries: tuple[TensorEntry, ...]
    storages: tuple[np.ndarray, ...]
    nbytes: int = 0
    chunks: tuple[TableChunk, ...] = ()


def round_up(value: int, multiple: int) -> int:
    """``value`` rounded up to a multiple of ``multiple``."""
    return -(-value // multiple) * multiple


def numel(shape: Sequence[int]) -> int:
    """The number of elements of a tensor of ``shape`` (1 for a scalar)."""
    count = 1
    for size in shape:
        count *= size
    return count


def check_shareable(tensor: torch.Tensor, where: str) -> None:
    """Raise :class:`UnsupportedModelError` if ``tensor`` cannot be stored as raw bytes."""
    if tensor.device.type == "meta":
        raise UnsupportedModelError(
            f"{where} is on the 'meta' device and holds no data. Materialize the weights "
            "before wrapping, e.g. model.to_empty(device='cpu') then load_state_dict(...)."
        )
    if tensor.is_nested:
        raise UnsupportedModelError(
            f"{where} is a nested tensor, which cannot be shared zero-copy. Store it as "
            "a padded dense tensor, or keep it out of the model."
        )
    if tensor.layout != torch.strided:
        raise UnsupportedModelError(
            f"{where} has layout {tensor.layout}; only dense (strided) tensors can be "
            "shared zero-copy. Convert it with .to_dense() before wrapping."
        )
    if tensor.is_quantized:
        raise UnsupportedModelError(
            f"{where} is a quantized tensor of torch.ao.quantization ({tensor.dtype}), which cannot be "
            "shared zero-copy: its kernels repack it into private memory in every process. Quantize the "
            "float model with torchao instead (torchao.quantization.quantize_), whose weights share "
            "zero-copy, or wrap the float model."
        )
    if type(tensor) not in PLAIN_TENSOR_TYPES:
        cls = type(tensor)
        name = f"{cls.__module__}.{cls.__qualname__}"
        lacks = [m for m in ("__tensor_flatten__", "__tensor_unflatten__") if not callable(getattr(cls, m, None))]
        if not lacks:
            raise UnsupportedModelError(
                f"{where} is a tensor subclass ({name}) given to build_table, which stores plain tensors "
                "only. Flatten it into its inner tensors first: split_tensors does so for every subclass "
                "that implements __tensor_flatten__ and __tensor_unflatten__."
            )
        raise UnsupportedModelError(
            f"{where} is a tensor subclass ({name}) without {' and '.join(lacks)}: only plain tensors and "
            "subclasses that implement PyTorch's traceable-subclass protocol (__tensor_flatten__ and "
            "__tensor_unflatten__, as torchao's quantized tensors do) can be shared zero-copy. Implement "
            "the protocol, or replace the tensor by a plain one before wrapping."
        )


def _byte_extent(tensor: torch.Tensor) -> tuple[int, int]:
    """Return the [start, end) byte range of ``tensor`` inside its storage."""
    itemsize = tensor.element_size()
    start = int(tensor.storage_offset()) * itemsize
    if tensor.numel() == 0:
        return start, start
    last = sum((int(size) - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return start, start + (last + 1) * itemsize


def _storage_bytes(tensor: torch.Tensor, start: int, end: int) -> np.ndarray:
    """A uint8 numpy view of bytes [start, end) of ``tensor``'s storage, copied only off-CPU."""
    raw = torch.empty(0, dtype=torch.uint8, device=tensor.device)
    raw.set_(tensor.untyped_storage(), start, (end - start,), (1,))
    if raw.device.type != "cpu":
        raw = raw.cpu()
    return raw.numpy()


def build_table(tensors: Sequence[tuple[str, torch.Tensor]]) -> TensorTable:
    """Index ``tensors`` (name, tensor) and collect their bytes, copying only small storages.

    Tensors that share a storage share one buffer, holding the span they use (widened
    to a 64-byte boundary). Storages under :data:`SMALL_STORAGE_BYTES` go into one pack.
    """
    keyed: dict[tuple[str, int], list[int]] = {}
    extents: list[tuple[int, int]] = []  # [start, end) in its storage, per tensor
    for position, (name, tensor) in enumerate(tensors):
        check_shareable(tensor, f"tensor {name!r}")
        extents.append(_byte_extent(tensor))
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr() if storage.nbytes() else -1 - position)
        keyed.setdefault(key, []).append(position)

    # (first tensor, span start, span end, positions) per storage; small ones are packed.
    spans: list[tuple[torch.Tensor, int, int, list[int]]] = []
    nbytes = 0
    for positions in keyed.values():
        used_start = min(extents[p][0] for p in positions)
        span_end = max(extents[p][1] for p in positions)
        nbytes += span_end - used_start
        span_start = used_start - used_start % ALIGNMENT
        spans.append((tensors[positions[0]][1], span_start, span_end, positions))
    small = [span for span in spans if span[2] - span[1] < SMALL_STORAGE_BYTES]
    large = [span for span in spans if span[2] - span[1] >= SMALL_STORAGE_BYTES]

    buffers: list[np.ndarray] = []
    placed: dict[int, tuple[int, int]] = {}  # tensor position -> (buffer index, byte offset of its span)
    if small:
        offsets, size = [], 0
        for _, span_start, span_end, _ in small:
            offsets.append(size)
            size = round_up(size + span_end - span_start, ALIGNMENT)
        pack = np.zeros(max(size, SMALL_STORAGE_BYTES), dtype=np.uint8)
        for offset, (tensor, span_start, span_end, positions) in zip(offsets, small):
            pack[offset : offset + span_end - span_start] = _storage_bytes(tensor, span_start, span_end)
            placed.update((p, (0, offset - span_start)) for p in positions)
        buffers.append(pack)
    for tensor, span_start, span_end, positions in large:
        placed.update((p, (len(buffers), -span_start)) for p in positions)
        buffers.append(_storage_bytes(tensor, span_start, span_end))

    entries = []
    for position, (_, tensor) in enumerate(tensors):
        storage_index, shift = placed[position]
        entries.append(
            TensorEntry(
                storage=storage_index,
                byte_offset=extents[position][0] + shift,
                dtype=tensor.dtype,
                shape=tuple(tensor.shape),
                stride=tuple(tensor.stride()),
                is_parameter=isinstance(tensor, torch.nn.Parameter),
                requires_grad=tensor.requires_grad,
            )
        )
    return TensorTable(tuple(entries), tuple(buffers), nbytes=nbytes)


def rebuild_tensors(table: TensorTable, bases: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """Recreate every indexed tensor as a view of its storage (same order as the index).

    ``bases[i]`` is a uint8 tensor holding storage ``i`` and the byte offset of the
    storage inside it.

    Raises:
        ZeroCopyError: a tensor's bytes are not aligned to its element size, which the
            layout rules out; the stored object was laid out by something else.
    """
    tensors: list[torch.Tensor] = []
    for entry in table.entries:
        base, storage_offset = bases[entry.storage]
        start = base.storage_offset() + storage_offset + entry.byte_offset
        if start % entry.dtype.itemsize:
            raise ZeroCopyError(
                f"A stored {entry.dtype} tensor starts at a byte offset that is not a multiple of its "
                f"element size ({entry.dtype.itemsize}). Stored tables align every storage to {ALIGNMENT} "
                "bytes, so this object was not written by this version of ray-zerocopy: wrap the model "
                "again with the installed version (and please report it if it was)."
            )
        view = torch.empty(0, dtype=entry.dtype, device=base.device)
        tensors.append(view.set_(base.untyped_storage(), start // entry.dtype.itemsize, entry.shape, entry.stride))
    return tensors
