"""Measuring zero-copy from inside and outside Ray workers (Linux /proc)."""

from __future__ import annotations

import os

import torch


def object_store_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of Ray's shared-memory object store."""
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "plasma" in line or "/dev/shm" in line:
                start, end = line.split()[0].split("-")
                ranges.append((int(start, 16), int(end, 16)))
    return ranges


def aliases_object_store(tensor: torch.Tensor) -> bool:
    """Whether ``tensor``'s data lies inside this process's object-store mapping."""
    address = tensor.data_ptr()
    return any(start <= address < end for start, end in object_store_ranges())


def private_bytes(pid: int | None = None) -> int:
    """Physical memory a process holds outside shared memory: ``Pss - Pss_Shmem`` in bytes.

    Object-store pages are shmem, so a zero-copy worker's weights do not count here;
    a worker that copied its weights sees them here in full.
    """
    fields: dict[str, int] = {}
    with open(f"/proc/{pid or os.getpid()}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    return fields.get("Pss", 0) - fields.get("Pss_Shmem", 0)
