"""Turning a stored :class:`TensorTable` into ready tensors, the way the options ask.

The default, on the CPU, is zero-copy: tensors alias the object-store memory, which
:mod:`ray_zerocopy_core.memory` maps chunk by chunk and makes read-only in this process.
``writable=True`` gives private copies; a CUDA device gets one host-to-device copy of
the stored bytes. Either way, tensors that shared a storage share one again.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection

import torch
from torch import nn

from ray_zerocopy_core.memory import map_stored_chunk, prefault_in_background
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.representation import TensorTable, rebuild_tensors

#: The exact warning torch gives when wrapping read-only numpy memory; silenced only for
#: tables that never left this process (the driver's own payload), which are used as they are.
_NOT_WRITABLE_WARNING = "The given NumPy array is not writable"


def storage_bases(table: TensorTable, options: LoadOptions) -> list[tuple[torch.Tensor, int]]:
    """For each storage of ``table``: a uint8 tensor holding it and the byte offset there.

    Zero-copy on the CPU unless ``options`` asks for a private or device copy (see the
    module doc). Each stored chunk is one stretch of memory and is handled as one
    tensor; a table that never left this process gives a tensor per storage.
    """
    bases: list[tuple[torch.Tensor, int] | None] = [None] * len(table.storages)
    prefault: list[torch.Tensor] = []
    for chunk in table.chunks:
        mapped = map_stored_chunk(chunk.buffers, protect=options.zero_copy)
        if mapped is None:
            continue
        whole, offsets = mapped
        if not options.zero_copy:
            whole = _private_copy(whole, options)
        elif options.prefault:
            prefault.append(whole)
        for storage, offset in zip(chunk.storages, offsets):
            bases[storage] = (whole, offset)
    if prefault:
        prefault_in_background(prefault)
    for index, base in enumerate(bases):
        if base is None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_NOT_WRITABLE_WARNING, category=UserWarning)
                raw = torch.from_numpy(table.storages[index])
            bases[index] = (raw if options.zero_copy else _private_copy(raw, options), 0)
    return bases  # type: ignore[return-value]


def _private_copy(raw: torch.Tensor, options: LoadOptions) -> torch.Tensor:
    if options.device is not None and torch.device(options.device).type != "cpu":
        return raw.to(options.device)
    return raw.clone()


def materialize(
    table: TensorTable, options: LoadOptions, *, parameters: Collection[int] | None = None
) -> list[torch.Tensor]:
    """Every tensor of ``table``, in index order, the way ``options`` ask (see the module doc).

    Parameters come back as ``nn.Parameter(..., requires_grad=False)``, one object per
    table index, so places that shared a parameter share it again.

    Args:
        table: the stored (or not yet stored) table.
        options: how to load it.
        parameters: which table indices are parameters. ``None``: those stored from an
            ``nn.Parameter``, none under ``options.use_fast_load``. Given explicitly, exactly
            these, fast load or not: a backend that knows its parameters from its own
            skeleton (its slots, :class:`~ray_zerocopy_core.slots.TensorSlot`) passes them, or
            ``()`` for plain tensors only.
    """
    tensors = rebuild_tensors(table, storage_bases(table, options))
    if parameters is None:
        if options.use_fast_load:
            return tensors
        parameters = [i for i, entry in enumerate(table.entries) if entry.is_parameter]
    wanted = frozenset(parameters)
    return [nn.Parameter(t, requires_grad=False) if i in wanted else t for i, t in enumerate(tensors)]
