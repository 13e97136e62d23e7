"""Turning a stored :class:`TensorTable` into ready tensors, the way the options ask.

The default, on the CPU, is zero-copy: tensors alias the object-store memory, which
:mod:`ray_zerocopy_core.memory` maps and makes read-only in this process.
``writable=True`` gives private copies; a CUDA device gets one host-to-device copy of
the stored bytes. Either way, tensors that shared a storage share one again.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from ray_zerocopy_core.memory import map_stored_table, prefault_in_background
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.representation import TensorTable, rebuild_tensors

#: The exact warning torch gives when wrapping read-only numpy memory; silenced only for
#: tables that never left this process (the driver's own payload), which are used as they are.
_NOT_WRITABLE_WARNING = "The given NumPy array is not writable"


def storage_bases(table: TensorTable, options: LoadOptions) -> list[tuple[torch.Tensor, int]]:
    """For each storage of ``table``: a uint8 tensor holding it and the byte offset there.

    Zero-copy on the CPU unless ``options`` asks for a private or device copy (see the
    module doc). A table stored in Ray is one stretch of memory and is handled as one
    tensor; one that never left this process gives a tensor per buffer.
    """
    mapped = map_stored_table(table, protect=options.zero_copy)
    if mapped is not None:
        whole, offsets = mapped
        if not options.zero_copy:
            whole = _private_copy(whole, options)
        elif options.prefault:
            prefault_in_background(whole)
        return [(whole, offset) for offset in offsets]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NOT_WRITABLE_WARNING, category=UserWarning)
        raw = [torch.from_numpy(buffer) for buffer in table.storages]
    if not options.zero_copy:
        raw = [_private_copy(r, options) for r in raw]
    return [(r, 0) for r in raw]


def _private_copy(raw: torch.Tensor, options: LoadOptions) -> torch.Tensor:
    if options.device is not None and torch.device(options.device).type != "cpu":
        return raw.to(options.device)
    return raw.clone()


def materialize(table: TensorTable, options: LoadOptions) -> list[Any]:
    """Every tensor of ``table`` in index order; parameters as ``nn.Parameter`` unless fast."""
    tensors = rebuild_tensors(table, storage_bases(table, options))
    if options.use_fast_load:
        return tensors
    return [
        nn.Parameter(tensor, requires_grad=False) if entry.is_parameter else tensor
        for entry, tensor in zip(table.entries, tensors)
    ]
