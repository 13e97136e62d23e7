"""Pickling an object graph with placeholders: the one persistent-id pickler pair of core.

:func:`dumps_with_placeholders` pickles an object with cloudpickle (so classes defined in
``__main__`` travel by value) while a hook may replace any object it meets by a small
key (a *persistent id*); :func:`loads_with_placeholders` unpickles it, asking for the
object behind each key. Two uses build on it:

- a backend's weightless *skeleton*: :func:`split_tensors` replaces each tensor by its
  position in a list, :func:`join_tensors` puts given tensors back (the eager backend);
- a pipeline sent to workers with a stand-in for each shared model
  (:mod:`ray_zerocopy_core.pipeline`).

Nothing is deep-copied: the replaced objects are only looked at, never pickled.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from ray import cloudpickle

#: Gives the key to put in place of an object, or None to pickle the object as usual.
Placeholder = Callable[[Any], Hashable | None]


class _PlaceholderPickler(cloudpickle.CloudPickler):
    def __init__(self, file: io.BytesIO, placeholder: Placeholder, fresh_classes: bool) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._placeholder = placeholder
        self._fresh_classes = fresh_classes

    def persistent_id(self, obj: Any) -> Hashable | None:
        return self._placeholder(obj)

    def reducer_override(self, obj: Any) -> Any:
        """With ``fresh_classes``, send classes by value untracked: each unpickling makes a class of its own.

        cloudpickle otherwise reuses a class it met before in the process (by a tracker
        id) and re-sets its methods, which would rebind the closures and globals of the
        caller's own class, or of an object unpickled earlier, to this unpickling's objects.
        """
        reduced = super().reducer_override(obj)
        if self._fresh_classes and isinstance(obj, type) and isinstance(reduced, tuple) and len(reduced) > 1:
            make, args = reduced[0], reduced[1]
            tracked = getattr(make, "__name__", "") == "_make_skeleton_class" and len(args) == 6
            if tracked and isinstance(args[4], str):
                reduced = (make, (*args[:4], None, *args[5:]), *reduced[2:])
        return reduced


class _PlaceholderUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, resolve: Callable[[Any], Any]) -> None:
        super().__init__(file)
        self._resolve = resolve

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def dumps_with_placeholders(obj: Any, placeholder: Placeholder, *, fresh_classes: bool = False) -> bytes:
    """Pickle ``obj``, putting ``placeholder(x)`` in place of every object ``x`` for which it is not None.

    ``fresh_classes``: classes pickled by value are made anew at each unpickling instead
    of being matched to one the process met before (see the pickler's ``reducer_override``).
    """
    buffer = io.BytesIO()
    _PlaceholderPickler(buffer, placeholder, fresh_classes).dump(obj)
    return buffer.getvalue()


def loads_with_placeholders(data: bytes, resolve: Callable[[Any], Any]) -> Any:
    """Unpickle what :func:`dumps_with_placeholders` wrote, with ``resolve(key)`` at each placeholder."""
    return _PlaceholderUnpickler(io.BytesIO(data), resolve).load()


def split_tensors(obj: Any) -> tuple[bytes, list[torch.Tensor]]:
    """Return ``obj`` pickled without its tensors, and those tensors in the order met.

    A tensor object met several times is listed once; every place holding it gets its position.
    """
    tensors: list[torch.Tensor] = []
    positions: dict[int, int] = {}

    def position(value: Any) -> int | None:
        if not isinstance(value, torch.Tensor):
            return None
        if id(value) not in positions:
            positions[id(value)] = len(tensors)
            tensors.append(value)
        return positions[id(value)]

    return dumps_with_placeholders(obj, position), tensors


def join_tensors(skeleton: bytes, tensors: Sequence[Any]) -> Any:
    """Unpickle ``skeleton`` (from :func:`split_tensors`), putting ``tensors[i]`` where tensor ``i`` was."""
    return loads_with_placeholders(skeleton, lambda pid: tensors[int(pid)])
