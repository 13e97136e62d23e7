"""Tables laid out in /dev/shm as Ray lays out stored objects, sized to what /dev/shm has free.

A write past the end of /dev/shm ends the process with SIGBUS (Docker gives containers
64 MiB by default), so tests ask :func:`shm_size` for their sizes and skip, naming
/dev/shm and its free space, when even the smallest useful size does not fit.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from dataclasses import replace

import numpy as np
import pytest
import torch

from ray_zerocopy_core import memory
from ray_zerocopy_core.representation import TableChunk, TensorTable, build_table

MIB = 1024**2
SHM = "/dev/shm"


def shm_free_bytes() -> int:
    """Bytes free in /dev/shm now (0 where there is no /dev/shm)."""
    try:
        stats = os.statvfs(SHM)
    except OSError:
        return 0
    return stats.f_bavail * stats.f_frsize


def shm_size(wanted: int, minimum: int) -> int:
    """``wanted`` bytes, or less (at least ``minimum``) where /dev/shm has less than twice that free.

    Skips the test when not even ``minimum`` fits, with the free space in the reason.
    """
    free = shm_free_bytes()
    size = min(wanted, free // 2)
    if size < minimum:
        pytest.skip(f"{SHM} has {free / MIB:.0f} MiB free; this test needs at least {2 * minimum / MIB:.0f} MiB")
    return size


def stored_in_shared_memory(table: TensorTable, first_offset: int = 64) -> TensorTable:
    """``table`` as one stored chunk (guarded) copied into a /dev/shm mapping with Ray's buffer alignment.

    Ray aligns buffers of 2 KiB and more to 64 bytes, smaller ones to 8.
    """
    guarded = memory.guarded(table.storages)
    total = sum(int(b.nbytes) + 64 for b in guarded) + first_offset + mmap.PAGESIZE
    shm_size(total, total)  # skip rather than die of SIGBUS
    with tempfile.TemporaryFile(dir=SHM) as backing:
        backing.truncate(total)
        mapping = mmap.mmap(backing.fileno(), total)
    memory_view = np.frombuffer(mapping, dtype=np.uint8)
    offset, buffers = first_offset, []
    for buffer in guarded:
        alignment = 64 if buffer.nbytes >= 2048 else 8
        offset = -(-offset // alignment) * alignment
        view = memory_view[offset : offset + buffer.nbytes]
        view[:] = buffer
        buffers.append(view)
        offset += int(buffer.nbytes)
    chunk = TableChunk(tuple(range(len(table.storages))), tuple(buffers))
    return replace(table, storages=tuple(buffers[1:-1]), chunks=(chunk,))


def weights_table(nbytes: int) -> TensorTable:
    """A table of one float32 weight of ``nbytes`` bytes (``0, 1, 2, ...``)."""
    return build_table([("weight", torch.arange(nbytes // 4, dtype=torch.float32))])
