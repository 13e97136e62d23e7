"""Measuring zero-copy from inside and outside Ray workers (Linux /proc)."""

from __future__ import annotations

import os

from ray_zerocopy_core.inspection import aliases_object_store

__all__ = ["aliases_object_store", "private_bytes"]


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
