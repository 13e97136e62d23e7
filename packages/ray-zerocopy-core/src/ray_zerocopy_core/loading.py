"""Turning a stored :class:`TensorTable` into ready tensors, the way the options ask.

The default, on the CPU, is zero-copy: tensors alias the object-store buffers and
those pages are made read-only in this process (:mod:`ray_zerocopy_core.protection`).
``writable=True`` gives private copies; a CUDA device gets one host-to-device copy per
storage. Either way, tensors that shared a storage share one again.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.protection import ProtectedRegion, protect
from ray_zerocopy_core.representation import TensorTable, rebuild_tensors

#: The exact warning torch gives when wrapping read-only memory; only silenced on the
#: path where the pages cannot be protected (and so are shared as they are).
_NOT_WRITABLE_WARNING = "The given NumPy array is not writable"


class _GuardedBuffer:
    """Numpy-array view of a stored buffer whose lifetime holds a protected region."""

    def __init__(self, buffer: np.ndarray, region: ProtectedRegion) -> None:
        self.region = region
        self.__array_interface__ = {
            "data": (int(buffer.ctypes.data), False),
            "shape": (int(buffer.nbytes),),
            "typestr": "|u1",
            "version": 3,
        }


def storage_tensors(table: TensorTable, options: LoadOptions) -> list[torch.Tensor]:
    """One uint8 tensor per storage of ``table``, as ``options`` asks (see module doc)."""
    region = protect(table.buffers) if options.zero_copy else None
    if region is not None:
        return [torch.from_numpy(np.asarray(_GuardedBuffer(b, region))) for b in table.storages]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_WRITABLE_WARNING, category=UserWarning)
        raw = [torch.from_numpy(buffer) for buffer in table.storages]
    if options.zero_copy:
        return raw
    if options.device is not None and torch.device(options.device).type != "cpu":
        return [r.to(options.device) for r in raw]
    return [r.clone() for r in raw]


def materialize(table: TensorTable, options: LoadOptions) -> list[Any]:
    """Every tensor of ``table`` in index order; parameters as ``nn.Parameter`` unless fast."""
    tensors = rebuild_tensors(table, storage_tensors(table, options))
    if options.use_fast_load:
        return tensors
    return [
        nn.Parameter(tensor, requires_grad=False) if entry.is_parameter else tensor
        for entry, tensor in zip(table.entries, tensors)
    ]
