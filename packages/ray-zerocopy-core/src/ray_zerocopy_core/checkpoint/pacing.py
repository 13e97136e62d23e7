"""Pacing the reads of checkpoint files while they are copied into the store, chunk by chunk.

The store copies a payload one chunk at a time (:mod:`ray_zerocopy_core.store`). For a
checkpoint, each storage of the payload is a view of a file mapped in this process (a
safetensors file, a ``torch.save``'d file torch mapped, or the conversion spool).
:class:`FilePacing` is told which storages are stored next and which are done: it asks
the kernel to read the next ones ahead (``MADV_WILLNEED``), so the disk reads the next
chunk while the current one is copied, and lets the done ones go (``MADV_DONTNEED`` on
this process's pages, then ``POSIX_FADV_DONTNEED`` on the file's cached pages), so the
node never holds more than a couple of chunks twice.

Only pages of these files' mappings are touched: a storage copied into private memory
(small tensors packed together) is left alone, and dropping a file page that is read
again later only costs that read.
"""

from __future__ import annotations

import logging
import mmap
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ray_zerocopy_core.memory import advise_pages
from ray_zerocopy_core.representation import round_up

logger = logging.getLogger(__name__)

_MADV_WILLNEED = 3
_MADV_DONTNEED = 4


@dataclass(frozen=True)
class _FileMapping:
    """One mapping of a file in this process: ``[start, end)`` shows the file from byte ``offset``."""

    start: int
    end: int
    offset: int
    fd: int


class FilePacing:
    """Reads ahead and drops the pages of a payload's storages that are views of ``files`` (see the module doc).

    ``files``: the paths (or open descriptors, for a file without a name such as the
    spool) whose mappings hold the storages. :meth:`close` closes the descriptors it opened.
    """

    def __init__(self, storages: Sequence[np.ndarray], files: Sequence[Path | int]) -> None:
        self._storages = storages
        self._opened: list[int] = []
        by_inode: dict[tuple[int, int], int] = {}
        for file in files:
            fd = file if isinstance(file, int) else os.open(file, os.O_RDONLY)
            if not isinstance(file, int):
                self._opened.append(fd)
            stat = os.fstat(fd)
            by_inode[(stat.st_dev, stat.st_ino)] = fd
        self._mappings = _mappings_of(by_inode)

    def read_ahead(self, storages: Sequence[int]) -> None:
        """Start reading the pages of these storages from disk."""
        for start, end, _ in self._file_ranges(storages):
            advise_pages(start, end, _MADV_WILLNEED)

    def release(self, storages: Sequence[int]) -> None:
        """These storages are stored: drop their pages from this process and from the page cache."""
        advise = getattr(os, "posix_fadvise", None)
        for start, end, mapping in self._file_ranges(storages):
            advise_pages(start, end, _MADV_DONTNEED)
            if advise is not None:
                first = mapping.offset + (start - mapping.start)
                try:
                    advise(mapping.fd, first, end - start, os.POSIX_FADV_DONTNEED)
                except OSError as exc:
                    logger.debug("posix_fadvise(DONTNEED) failed: %s", exc)

    def _file_ranges(self, storages: Sequence[int]) -> list[tuple[int, int, _FileMapping]]:
        """The page-aligned address ranges of these storages that lie in the files' mappings."""
        ranges = []
        for index in storages:
            array = self._storages[index]
            low = int(array.ctypes.data)
            high = low + int(array.nbytes)
            for mapping in self._mappings:
                start, end = max(low, mapping.start), min(high, mapping.end)
                if start < end:
                    start -= start % mmap.PAGESIZE
                    end = round_up(end, mmap.PAGESIZE)
                    ranges.append((max(start, mapping.start), min(end, mapping.end), mapping))
        return ranges

    def close(self) -> None:
        """Close the descriptors this opened."""
        for fd in self._opened:
            os.close(fd)
        self._opened = []


def _mappings_of(fds_by_inode: dict[tuple[int, int], int]) -> list[_FileMapping]:
    """This process's mappings of the files with these (device, inode), from ``/proc/self/maps``."""
    found = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) < 6:
                    continue
                major, minor = (int(x, 16) for x in fields[3].split(":"))
                key = (os.makedev(major, minor), int(fields[4]))
                fd = fds_by_inode.get(key)
                if fd is None:
                    continue
                low, high = (int(x, 16) for x in fields[0].split("-"))
                found.append(_FileMapping(low, high, int(fields[2], 16), fd))
    except OSError:  # no /proc (not Linux): no pacing, the files' cache is dropped when they are closed
        pass
    return found
