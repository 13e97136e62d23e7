"""aliases_object_store tells shared-memory tensors from private ones."""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pytest
import torch

from ray_zerocopy_core.inspection import aliases_object_store, shared_memory_ranges


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_shared_mapping_is_recognised_and_private_memory_is_not() -> None:
    with tempfile.NamedTemporaryFile(dir="/dev/shm") as backing:
        backing.truncate(1 << 16)
        mapped = np.memmap(backing.name, dtype=np.uint8, mode="r+", shape=(1 << 16,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shared = torch.from_numpy(mapped)
        assert shared_memory_ranges()
        assert aliases_object_store(shared)
        assert not aliases_object_store(torch.zeros(1 << 16, dtype=torch.uint8))
        del shared, mapped
