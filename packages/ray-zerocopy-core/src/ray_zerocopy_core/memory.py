"""Shared memory in this process: mapping stored tables, protecting, prefaulting, releasing.

This module is the one owner of object-store memory a process maps. Each stored chunk
of a model (:mod:`ray_zerocopy_core.store`) is one stretch of memory: a zero-filled
guard, some storages, a guard (:func:`guarded` adds the guards before it is stored).
Loading it zero-copy (:func:`map_stored_chunk`) gives one uint8 tensor over that stretch.

Write protection: every worker on a node maps the same object-store pages, so an
in-place write to one would change what every other worker sees. The pages that lie
wholly inside the stretch are made read-only here with ``mprotect`` (the guards, a page
of the storing machine each, make sure those pages cover every weight byte and hold
nothing else). One record per stored object per process counts every mapping over it,
whichever load made it (two ``load()`` calls, other options, task-mode caches): the
pages become writable again only when the last tensor over them is gone. A write to a
protected page ends the process with SIGSEGV, explained by
:mod:`ray_zerocopy_core.fault_explainer`.

Only memory that this process maps from shared memory (the object store) is ever
protected; a table that never left the process is used as it is. Where protection
cannot be applied the load still works, and a warning says so once per process.

The one other kind of mapping handled here is a checkpoint file read on its way into
the store: :func:`unmap_file_pages` lets its pages go, so that the page cache can drop
them once they are copied.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ray_zerocopy_core import fault_explainer
from ray_zerocopy_core.representation import round_up

logger = logging.getLogger(__name__)

#: This system's page size (4 KiB on x86-64, 64 KiB on many aarch64 kernels).
PAGE_SIZE = mmap.PAGESIZE
#: Size of the zero-filled guards around a stored chunk: a page of this machine (at least 4 KiB).
GUARD_BYTES = max(PAGE_SIZE, 4096)
#: Ray pads out-of-band buffers to 64 bytes; buffers of one stored object lie closer than this.
_MAX_GAP = 64

_PROT_READ = 0x1
_PROT_WRITE = 0x2
_MADV_DONTNEED = 4
_MADV_POPULATE_READ = 22  # Linux 5.14+


def guarded(storages: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """``storages`` framed by two zero-filled guards, as one chunk is stored."""
    head, tail = np.zeros(GUARD_BYTES, dtype=np.uint8), np.zeros(GUARD_BYTES, dtype=np.uint8)  # two objects: pickle
    return (head, *storages, tail)  # would store one array twice


# --- libc ------------------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:  # glibc's name first: find_library runs `ldconfig -p` in a subprocess
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        for name in ("mprotect", "madvise"):
            function = getattr(libc, name)
            function.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            function.restype = ctypes.c_int
        _libc = libc
    return _libc


def _mprotect(start: int, length: int, prot: int) -> int:
    """``mprotect``; returns 0 or the errno."""
    libc = _load_libc()
    if libc is None:
        return -1
    return 0 if libc.mprotect(start, length, prot) == 0 else ctypes.get_errno()


# --- where shared memory is ------------------------------------------------------------

_shared_ranges: list[tuple[int, int]] = []


def shared_memory_ranges(refresh: bool = True) -> list[tuple[int, int]]:
    """Address ranges ``[start, end)`` this process maps from Ray's object store or ``/dev/shm``.

    Reads ``/proc/self/maps`` (empty where it does not exist); ``refresh=False`` returns
    what the last read found.
    """
    global _shared_ranges
    if refresh:
        ranges: list[tuple[int, int]] = []
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    if "plasma" in line or "/dev/shm" in line:
                        low, high = (int(x, 16) for x in line.split()[0].split("-"))
                        if ranges and ranges[-1][1] == low:  # one mapping split by mprotect
                            ranges[-1] = (ranges[-1][0], high)
                        else:
                            ranges.append((low, high))
        except FileNotFoundError:
            pass
        _shared_ranges = ranges
    return _shared_ranges


def in_shared_memory(start: int, end: int) -> bool:
    """Whether ``[start, end)`` lies inside one shared mapping of this process."""
    for refresh in (False, True):  # the object store's mapping rarely changes: look it up once
        if any(low <= start and end <= high for low, high in shared_memory_ranges(refresh)):
            return True
    return False


# --- one record per stored object per process ------------------------------------------


@dataclass
class _MappedObject:
    """A stored object mapped in this process: its protected pages and who uses them."""

    start: int
    end: int
    protected_start: int = 0
    protected_end: int = 0
    users: int = 0


_lock = threading.Lock()
_mapped: dict[tuple[int, int], _MappedObject] = {}
_warned_unprotected = False


def _warn_unprotected(reason: str) -> None:
    global _warned_unprotected
    logger.info("weights are not write-protected: %s", reason)
    if not _warned_unprotected:
        _warned_unprotected = True
        warnings.warn(
            f"ray-zerocopy: model weights loaded in this process are NOT write-protected ({reason}). "
            "An in-place write to a weight would change it for every worker on this node; "
            "use .load(writable=True) for weights you modify.",
            RuntimeWarning,
            stacklevel=4,
        )


def _protect(record: _MappedObject, guard_bytes: int) -> None:
    """Make the pages wholly inside ``record`` read-only, or warn (once) why not."""
    if guard_bytes < PAGE_SIZE:
        _warn_unprotected(f"the page size here, {PAGE_SIZE} bytes, is larger than the stored guards")
        return
    start = round_up(record.start, PAGE_SIZE)
    end = record.end // PAGE_SIZE * PAGE_SIZE
    if end <= start:
        return
    errno = _mprotect(start, end - start, _PROT_READ)
    if errno:
        _warn_unprotected(f"mprotect failed: {os.strerror(errno)}" if errno > 0 else "mprotect is not available")
        return
    record.protected_start, record.protected_end = start, end
    problem = fault_explainer.install()
    if problem is None:
        fault_explainer.explain_writes_to(start, end)
    else:
        logger.info("a write to protected weights will end this process without an explanation: %s", problem)


#: Mappings that are gone, waiting for the lock: (key, the stored buffers, kept alive until
#: the pages are writable again). Finalizers can run inside a locked section of this very
#: thread (a garbage collection during an allocation), so they only queue here.
_released: list[tuple[tuple[int, int], tuple[Any, ...]]] = []


def _release(key: tuple[int, int], buffers: tuple[Any, ...]) -> None:
    """Finalizer of a mapping: queue it, and settle the queue unless someone holds the lock."""
    _released.append((key, buffers))
    if _lock.acquire(blocking=False):
        try:
            _settle_released()
        finally:
            _lock.release()


def _settle_released() -> None:
    """Count down every queued mapping; the last one over an object makes its pages writable (lock held)."""
    while _released:
        key, buffers = _released.pop()
        record = _mapped.get(key)
        if record is None:
            continue
        record.users -= 1
        if record.users > 0:
            continue
        del _mapped[key]
        if record.protected_end > record.protected_start:
            fault_explainer.forget(record.protected_start)
            length = record.protected_end - record.protected_start
            if _mprotect(record.protected_start, length, _PROT_READ | _PROT_WRITE):
                logger.debug("could not restore write access to %#x-%#x", record.protected_start, record.protected_end)
        del buffers  # only now may Ray reuse those pages


class _StoredStretch:
    """A numpy-array view of one stored chunk's whole stretch of memory.

    Tensors made from it keep it alive; it keeps the chunk's buffers alive (so Ray
    keeps the object mapped in this process) and, while it lives, counts as one user
    of the object's record.
    """

    def __init__(self, buffers: tuple[np.ndarray, ...], start: int, end: int, key: tuple[int, int] | None) -> None:
        self.buffers = buffers
        self.__array_interface__ = {"data": (start, False), "shape": (end - start,), "typestr": "|u1", "version": 3}
        if key is not None:
            weakref.finalize(self, _release, key, buffers)


def _stored_extent(buffers: tuple[np.ndarray, ...]) -> tuple[int, int] | None:
    """``[start, end)`` of buffers that lie one after another (as Ray writes them), or None."""
    previous_end = None
    for buffer in buffers:
        start = int(buffer.ctypes.data)
        if previous_end is not None and not 0 <= start - previous_end < _MAX_GAP:
            return None
        previous_end = start + int(buffer.nbytes)
    first = int(buffers[0].ctypes.data)
    assert previous_end is not None
    return first, previous_end


def map_stored_chunk(buffers: tuple[np.ndarray, ...], protect: bool) -> tuple[torch.Tensor, list[int]] | None:
    """One uint8 tensor over a stored chunk (guard, storages, guard) and each storage's offset in it.

    ``protect``: make the weight pages read-only while this tensor (or any other over
    the same stored object) lives. Buffers that are not one stretch of shared memory (a
    chunk that never left this process) give None.
    """
    extent = _stored_extent(buffers) if len(buffers) > 2 else None
    if extent is None or not in_shared_memory(*extent):
        return None
    start, end = extent
    key: tuple[int, int] | None = None
    if protect:
        key = extent
        with _lock:
            _settle_released()
            record = _mapped.get(key)
            if record is None:
                record = _mapped[key] = _MappedObject(start, end)
                if _load_libc() is None:
                    _warn_unprotected(f"no mprotect on {sys.platform}")
                else:
                    _protect(record, min(int(buffers[0].nbytes), int(buffers[-1].nbytes)))
            record.users += 1
            _settle_released()  # mappings a garbage collection released meanwhile
    stretch = _StoredStretch(buffers, start, end, key)
    whole = torch.from_numpy(np.asarray(stretch))
    offsets = [int(buffer.ctypes.data) - start for buffer in buffers[1:-1]]
    return whole, offsets


def protected_ranges() -> list[tuple[int, int]]:
    """The read-only page ranges of this process, one per stored object in use (for tests and debugging)."""
    with _lock:
        return [(r.protected_start, r.protected_end) for r in _mapped.values() if r.protected_end > r.protected_start]


def prefault_in_background(tensors: list[torch.Tensor]) -> threading.Thread | None:
    """Fault the pages of ``tensors`` into this process from a daemon thread, one after another; return it.

    ``madvise(MADV_POPULATE_READ)`` maps every page without copying it; ctypes drops
    the GIL during the call, so the caller goes on while the pages come in. The
    thread holds the tensors (and so the memory) until it is done.
    """
    libc = _load_libc()
    if libc is None or not tensors:
        return None

    def populate(holder: list[torch.Tensor]) -> None:
        for tensor in holder:
            start, end = tensor.data_ptr(), tensor.data_ptr() + tensor.numel() * tensor.element_size()
            start -= start % PAGE_SIZE  # madvise wants a page-aligned start
            if end > start and libc.madvise(start, end - start, _MADV_POPULATE_READ) != 0:
                logger.debug("MADV_POPULATE_READ unavailable (errno %d); pages fault in on use", ctypes.get_errno())
                break
        holder.clear()

    thread = threading.Thread(target=populate, args=(list(tensors),), name="ray-zerocopy-prefault", daemon=True)
    thread.start()
    return thread


def protection_supported() -> bool:
    """Whether this platform can make pages read-only (Linux with a usable libc)."""
    return _load_libc() is not None


def advise_pages(start: int, end: int, advice: int) -> None:
    """``madvise(start, end - start, advice)`` on page-aligned ``[start, end)`` (nothing without libc)."""
    libc = _load_libc()
    if libc is not None and end > start and libc.madvise(start, end - start, advice) != 0:
        logger.debug("madvise(%d) failed: errno %d", advice, ctypes.get_errno())


def unmap_file_pages(tensor: torch.Tensor) -> None:
    """Drop the pages under ``tensor``'s storage from this process's page tables (``MADV_DONTNEED``).

    Only for read-only views of a mapped *file* (a checkpoint): the bytes stay in the
    file and a later read faults them back in. Pages no process maps can then be dropped
    from the page cache, even while a Python object still holds the mapping.
    """
    libc = _load_libc()
    storage = tensor.untyped_storage()
    if libc is None or storage.nbytes() == 0 or tensor.device.type != "cpu":
        return
    start = storage.data_ptr()
    end = start + storage.nbytes()
    start -= start % PAGE_SIZE
    end -= end % PAGE_SIZE  # whole pages only: the edges may belong to a neighbour still in use
    if end > start and libc.madvise(start, end - start, _MADV_DONTNEED) != 0:
        logger.debug("madvise(MADV_DONTNEED) failed: errno %d", ctypes.get_errno())
