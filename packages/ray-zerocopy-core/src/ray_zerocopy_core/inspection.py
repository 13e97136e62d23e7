"""Checking that a loaded model really shares memory: where its tensors live (Linux).

Useful in tests and when debugging a deployment: inside a worker,
``aliases_object_store(tensor)`` tells whether the tensor's bytes are mapped from
Ray's shared-memory object store rather than copied into the process.
"""

from __future__ import annotations

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
