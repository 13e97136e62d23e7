"""Weightless skeletons: pickle an object graph with every tensor factored out.

:func:`split_tensors` pickles an object (an ``nn.Module``, or anything holding
tensors) with cloudpickle, so classes defined in ``__main__`` travel by value, while a
persistent-id hook replaces each tensor by its position in a list. The pickle bytes are
the skeleton; the tensors go to the :mod:`~ray_zerocopy_core.representation` table.
:func:`join_tensors` unpickles the skeleton and hands back a given tensor at each
position. Nothing is deep-copied: the weights are only read, once, by the table.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import torch
from ray import cloudpickle


class _TensorFactoringPickler(cloudpickle.CloudPickler):
    """A CloudPickler that emits tensors as persistent ids instead of their data."""

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.tensors: list[torch.Tensor] = []
        self._positions: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> int | None:
        if not isinstance(obj, torch.Tensor):
            return None
        position = self._positions.get(id(obj))
        if position is None:
            position = len(self.tensors)
            self._positions[id(obj)] = position
            self.tensors.append(obj)
        return position


class _TensorJoiningUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, tensor_at: Callable[[int], Any]) -> None:
        super().__init__(file)
        self._tensor_at = tensor_at

    def persistent_load(self, pid: Any) -> Any:
        return self._tensor_at(int(pid))


def split_tensors(obj: Any) -> tuple[bytes, list[torch.Tensor]]:
    """Return ``obj`` pickled without its tensors, and those tensors in id order."""
    buffer = io.BytesIO()
    pickler = _TensorFactoringPickler(buffer)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.tensors


def join_tensors(skeleton: bytes, tensors: Sequence[Any]) -> Any:
    """Unpickle ``skeleton``, putting ``tensors[i]`` where tensor ``i`` was."""
    return _TensorJoiningUnpickler(io.BytesIO(skeleton), tensors.__getitem__).load()
