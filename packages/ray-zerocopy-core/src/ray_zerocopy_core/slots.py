"""Slots: the places a backend takes each tensor from, and puts it back into on rebuild.

A backend whose skeleton keeps tensors by name (a submodule attribute, a key of a
state dict) records one :class:`TensorSlot` per place. :func:`index_tensors` gives every
distinct tensor object one table index, so a tensor reachable from several places (tied
weights, a shared submodule) is stored once, and its slots share that index: on
rebuild they get one tensor object again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorSlot:
    """One place holding a tensor, and the table entry that fills it.

    A slot is plain data (``TensorSlot(*dataclasses.astuple(slot))`` gives it back), so a
    backend can keep its slots in any skeleton format.

    Attributes:
        where: the backend's name for the container: a submodule path (``""`` for the
            root), a dictionary's name...
        name: the tensor's name inside that container.
        index: position of the tensor in the payload's table.
        is_parameter: whether the place holds a parameter (so rebuild gives it an
            ``nn.Parameter``, see :func:`~ray_zerocopy_core.loading.materialize`).
    """

    where: str
    name: str
    index: int
    is_parameter: bool

    @property
    def qualified_name(self) -> str:
        """``where.name`` (just ``name`` when ``where`` is empty), as in ``state_dict`` keys."""
        return f"{self.where}.{self.name}" if self.where else self.name


def index_tensors(
    found: Iterable[tuple[str, str, torch.Tensor, bool]],
) -> tuple[list[TensorSlot], list[tuple[str, torch.Tensor]]]:
    """Slots for ``(where, name, tensor, is_parameter)`` places, and the distinct tensors.

    Tensors are told apart by identity: the same tensor object found in several places
    is listed once, named after its first place, and its slots share its index. The
    tensor list is what :func:`~ray_zerocopy_core.representation.build_table` takes.

    Example::

        slots, tensors = index_tensors(
            (path, name, tensor, name in params) for path, module in ... for name, tensor in ...
        )
        table = build_table(tensors)
    """
    slots: list[TensorSlot] = []
    tensors: list[tuple[str, torch.Tensor]] = []
    index_of: dict[int, int] = {}
    for where, name, tensor, is_parameter in found:
        slot = TensorSlot(where, name, index_of.setdefault(id(tensor), len(tensors)), is_parameter)
        if slot.index == len(tensors):
            tensors.append((slot.qualified_name, tensor))
        slots.append(slot)
    return slots, tensors
