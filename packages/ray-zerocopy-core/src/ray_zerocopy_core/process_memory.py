"""How much memory a process holds of its own, and trimming its heap (Linux ``/proc``, glibc).

Standard library only: the node holder and directory actors (:mod:`ray_zerocopy_core.cluster`)
run this code without importing torch, and tests and benchmarks use it to show that a
zero-copy worker holds no private copy of the weights.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os


def private_memory_bytes(pid: int | None = None) -> int:
    """Physical memory a process holds outside shared memory, in bytes (``Pss - Pss_Shmem``).

    Read from ``/proc/PID/smaps_rollup`` (this process by default). Object-store pages
    are shared memory, so a zero-copy worker's weights do not count here, while a worker
    that copied its weights shows them in full. Summing plain PSS of every worker and
    adding the object store would count the shared pages twice.

    Raises:
        OSError: ``/proc/PID/smaps_rollup`` cannot be read (not Linux, or no such process).
    """
    fields = _rollup(pid)
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)


def anonymous_memory_bytes(pid: int | None = None) -> int | None:
    """Anonymous memory of a process, in bytes (``Pss_Anon``): its heap, stacks and private copies.

    Unlike :func:`private_memory_bytes` this leaves out pages of files the process maps
    (page cache, shared and reclaimable), so it shows whether reading a checkpoint
    through a mapping made a private copy of it.

    Returns:
        The bytes, or None when the kernel does not report ``Pss_Anon`` (Linux before 5.7):
        the meter cannot read there, and a caller must not take that for "no growth".

    Raises:
        OSError: ``/proc/PID/smaps_rollup`` cannot be read (not Linux, or no such process).
    """
    return _rollup(pid).get("Pss_Anon")


def _rollup(pid: int | None) -> dict[str, int]:
    """The byte counts of ``/proc/PID/smaps_rollup`` (this process by default), by field name."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return fields


def trim_heap() -> None:
    """Collect garbage and give freed heap pages back to the OS (glibc ``malloc_trim``).

    Memory freed but still held by the allocator would otherwise count as the process's
    own; without glibc only the collection runs.
    """
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
