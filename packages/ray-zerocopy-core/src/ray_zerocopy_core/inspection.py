"""Checking that a loaded model really shares memory: where its tensors live (Linux).

Useful in tests and when debugging a deployment: inside a worker,
``aliases_object_store(tensor)`` tells whether the tensor's bytes are mapped from
Ray's shared-memory object store rather than copied into the process.
"""

from __future__ import annotations

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
