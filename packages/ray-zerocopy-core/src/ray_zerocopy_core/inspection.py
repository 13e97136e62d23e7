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


def aliases_object_store(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s data lies in shared memory mapped by this process (no private copy).

    Example::

        model = wrapper.load()
        assert all(aliases_object_store(p) for p in model.parameters())
    """
    address = tensor.data_ptr()
    return any(start <= address < end for start, end in shared_memory_ranges())


def private_memory_bytes(pid: int | None = None) -> int:
    """Physical memory a process holds outside shared memory, in bytes (``Pss - Pss_Shmem``).

    Read from ``/proc/PID/smaps_rollup`` (this process by default). Object-store pages
    are shared memory, so a zero-copy worker's weights do not count here, while a worker
    that copied its weights shows them in full. Summing plain PSS of every worker and
    adding the object store would count the shared pages twice.
    """
    fields: dict[str, int] = {}
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def anonymous_memory_bytes(pid: int | None = None) -> int:
    """Anonymous memory of a process, in bytes (``Pss_Anon``): its heap, stacks and private copies.

    Unlike :func:`private_memory_bytes` this leaves out pages of files the process maps
    (page cache, shared and reclaimable), so it shows whether reading a checkpoint
    through a mapping made a private copy of it. 0 on kernels without ``Pss_Anon`` (< 5.7).
    """
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1]) * 1024
    return 0


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
            pages = -(-size // mmap.PAGESIZE)
            vector = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.addressof(anchor), size, vector) != 0:
                raise OSError(ctypes.get_errno(), "mincore failed")
            resident = sum(byte & 1 for byte in vector)
        finally:
            del anchor
    return min(resident * mmap.PAGESIZE, size)
