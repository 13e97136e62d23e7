"""Checking that a loaded model really shares memory: where its tensors live (Linux).

Useful in tests and when debugging a deployment: inside a worker,
``aliases_object_store(tensor)`` tells whether the tensor's bytes are mapped from
Ray's shared-memory object store rather than copied into the process.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import torch

from ray_zerocopy_core.memory import shared_memory_ranges
from ray_zerocopy_core.pickling import flatten_subclass, is_flattenable
from ray_zerocopy_core.representation import round_up


def aliases_object_store(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s data lies in shared memory mapped by this process (no private copy).

    For a tensor subclass stored as its inner tensors (a torchao quantized weight):
    whether every inner tensor does.

    Example::

        model = wrapper.load()
        assert all(aliases_object_store(p) for p in model.parameters())
    """
    if is_flattenable(tensor):
        return all(aliases_object_store(inner) for inner in flatten_subclass(tensor)[0].values())
    address = tensor.data_ptr()
    return any(start <= address < end for start, end in shared_memory_ranges())


def cached_file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the file ``path`` now in the page cache (``mincore``; Linux).

    After a checkpoint is shared, its files' cached pages are dropped: this shows it.
    """
    size = os.path.getsize(path)
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_COPY) as mapping:
        anchor = ctypes.c_char.from_buffer(mapping)  # a private, untouched mapping: nothing is read
        try:
            pages = round_up(size, mmap.PAGESIZE) // mmap.PAGESIZE
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.addressof(anchor), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            resident = sum(byte & 1 for byte in vector)
        finally:
            del anchor
    return min(resident * mmap.PAGESIZE, size)
