"""The shared representation: a model's tensors as raw bytes plus a small index.

Extraction groups tensors by the storage they live in, so tied and otherwise shared
weights are written once. Each storage's bytes travel as a ``uint8`` numpy view of the
original memory (no copy on the driver); Ray's pickle-5 out-of-band path writes each
byte into the object store once, and a worker maps it back without copying. Rebuild
reinterprets those bytes with ``Tensor.view(dtype)``, so every torch dtype works,
including the ones numpy lacks (bfloat16, float8).

The buffers are framed by two one-page pads, so that in the object store every weight
byte lies on a page that holds nothing but this model's bytes: this is what lets
:mod:`ray_zerocopy_core.protection` make the weights read-only page by page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ray_zerocopy_core.errors import UnsupportedModelError

PAGE_SIZE = 4096


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


@dataclass
class TensorTable:
    """Tensors of one model as storage buffers plus an index; small to pickle but the bytes.

    ``buffers`` starts and ends with a one-page pad; ``buffers[1:-1]`` hold the storages.
    """

    entries: tuple[TensorEntry, ...]
    buffers: tuple[np.ndarray, ...]

    @property
    def storages(self) -> tuple[np.ndarray, ...]:
        """The storage buffers, without the framing pads."""
        return self.buffers[1:-1]

    @property
    def nbytes(self) -> int:
        """Bytes of weights this table stores (shared storage counted once)."""
        return sum(int(buf.nbytes) for buf in self.storages)


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
            f"{where} is a quantized tensor, which cannot be shared zero-copy. Wrap the "
            "float model, or dequantize it first."
        )
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter, torch.nn.Buffer):
        raise UnsupportedModelError(
            f"{where} is a tensor subclass ({type(tensor).__qualname__}); only plain "
            "tensors, Parameters and Buffers can be shared zero-copy."
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


def _pad() -> np.ndarray:
    return np.zeros(PAGE_SIZE, dtype=np.uint8)


def build_table(tensors: Sequence[tuple[str, torch.Tensor]]) -> TensorTable:
    """Index ``tensors`` (name, tensor) and collect their bytes without copying CPU memory.

    Tensors that share a storage share one buffer, holding the span they use.
    """
    keyed: dict[tuple[str, int], list[int]] = {}
    for position, (name, tensor) in enumerate(tensors):
        check_shareable(tensor, f"tensor {name!r}")
        storage = tensor.untyped_storage()
        key = (str(tensor.device), storage.data_ptr() if storage.nbytes() else -1 - position)
        keyed.setdefault(key, []).append(position)

    entries: list[TensorEntry | None] = [None] * len(tensors)
    buffers: list[np.ndarray] = [_pad()]
    for positions in keyed.values():
        extents = [_byte_extent(tensors[p][1]) for p in positions]
        span_start = min(start for start, _ in extents)
        span_end = max(end for _, end in extents)
        storage_index = len(buffers) - 1
        buffers.append(_storage_bytes(tensors[positions[0]][1], span_start, span_end))
        for position, (start, _) in zip(positions, extents):
            tensor = tensors[position][1]
            entries[position] = TensorEntry(
                storage=storage_index,
                byte_offset=start - span_start,
                dtype=tensor.dtype,
                shape=tuple(tensor.shape),
                stride=tuple(tensor.stride()),
                is_parameter=isinstance(tensor, torch.nn.Parameter),
                requires_grad=tensor.requires_grad,
            )
    buffers.append(_pad())
    return TensorTable(tuple(e for e in entries if e is not None), tuple(buffers))


def rebuild_tensors(table: TensorTable, bases: Sequence[tuple[torch.Tensor, int]]) -> list[torch.Tensor]:
    """Recreate every indexed tensor as a view of its storage (same order as the index).

    ``bases[i]`` is a uint8 tensor holding storage ``i`` and the byte offset of the
    storage inside it.
    """
    tensors: list[torch.Tensor] = []
    for entry in table.entries:
        base, storage_offset = bases[entry.storage]
        itemsize = entry.dtype.itemsize
        start = base.storage_offset() + storage_offset + entry.byte_offset
        if start % itemsize == 0:
            view = torch.empty(0, dtype=entry.dtype, device=base.device)
            tensors.append(view.set_(base.untyped_storage(), start // itemsize, entry.shape, entry.stride))
        else:  # a tensor not aligned to its own element size inside the storage
            raw = base[storage_offset + entry.byte_offset :]
            flat = raw[: raw.numel() // itemsize * itemsize].view(entry.dtype)
            tensors.append(flat.as_strided(entry.shape, entry.stride))
    return tensors
