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
from ray_zerocopy_core.protection import (
    ProtectedRegion,
    Span,
    buffer_spans,
    laid_out_together,
    prefault_in_background,
    protect,
)
from ray_zerocopy_core.representation import TensorTable, rebuild_tensors

#: The exact warning torch gives when wrapping read-only memory; only silenced on the
#: path where the pages cannot be protected (and so are shared as they are).
_NOT_WRITABLE_WARNING = "The given NumPy array is not writable"


class _StoredSpan:
    """A numpy-array view of a whole stored table; holds its protected region, if any.

    One array (and so one tensor) spans every buffer, and each tensor is set directly
    onto its storage at the right offset: a couple of microseconds per tensor.
    """

    def __init__(self, spans: list[Span], region: ProtectedRegion | None) -> None:
        self.region = region
        self.start = spans[0][0]
        self.__array_interface__ = {
            "data": (self.start, False),
            "shape": (spans[-1][0] + spans[-1][1] - self.start,),
            "typestr": "|u1",
            "version": 3,
        }


def storage_bases(table: TensorTable, options: LoadOptions) -> list[tuple[torch.Tensor, int]]:
    """For each storage of ``table``: a uint8 tensor holding it and the byte offset there.

    Zero-copy on the CPU unless ``options`` asks for a private or device copy (see the
    module doc). A table that was stored in Ray is one span in memory and is handled
    as one tensor; one that never left this process falls back to a tensor per buffer.
    """
    spans = buffer_spans(table.buffers)
    if laid_out_together(spans):
        region = protect(spans) if options.zero_copy else None
        span = _StoredSpan(spans, region)
        whole = torch.from_numpy(np.asarray(span))
        if not options.zero_copy:
            whole = _private_copy(whole, options)
        elif options.prefault:
            prefault_in_background(span.start, span.start + whole.numel(), keep_alive=whole)
        return [(whole, address - spans[0][0]) for address, _ in spans[1:-1]]
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
