"""Pickling an object graph with placeholders: the one persistent-id pickler pair of core.

:func:`dumps_with_placeholders` pickles an object with cloudpickle (so classes defined in
``__main__`` travel by value) while a hook may replace any object it meets by a small
key (a *persistent id*); :func:`loads_with_placeholders` unpickles it, asking for the
object behind each key. Two uses build on it:

- a backend's weightless *skeleton*: :func:`split_tensors` replaces each tensor by its
  position in a list, :func:`join_tensors` puts given tensors back (the eager backend).
  A tensor subclass that implements PyTorch's traceable-subclass protocol
  (``__tensor_flatten__`` / ``__tensor_unflatten__``, as torchao's quantized tensors do)
  is replaced by a record of its type, flatten context, size and stride, holding its
  inner tensors (placeholders themselves, subclasses recursively); it is unflattened
  around the given tensors;
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
from torch import nn

from ray_zerocopy_core.representation import PLAIN_TENSOR_TYPES

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


#: First field of the placeholder key of a tensor subclass (see :func:`split_tensors`).
SUBCLASS_KEY = "ray-zerocopy:tensor-subclass"


def is_flattenable(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a subclass that implements the traceable-subclass protocol.

    Such a subclass (a torchao quantized tensor, for one) says which plain inner tensors
    it is made of (``__tensor_flatten__``) and is rebuilt from them
    (``__tensor_unflatten__``), so it can be stored as those inner tensors.
    """
    cls = type(tensor)
    return (
        cls not in PLAIN_TENSOR_TYPES
        and callable(getattr(cls, "__tensor_flatten__", None))
        and callable(getattr(cls, "__tensor_unflatten__", None))
    )


def flatten_subclass(tensor: torch.Tensor) -> tuple[dict[str, torch.Tensor], Any]:
    """The inner tensors of a flattenable subclass, by attribute name, and its flatten context."""
    names, context = tensor.__tensor_flatten__()  # type: ignore[attr-defined]
    return {name: getattr(tensor, name) for name in names}, context


def split_tensors(obj: Any) -> tuple[bytes, list[torch.Tensor]]:
    """Return ``obj`` pickled without its tensors, and those tensors in the order met.

    A tensor object met several times is listed once; every place holding it gets its
    position. A flattenable tensor subclass (:func:`is_flattenable`) is not listed: its
    place gets a key ``(SUBCLASS_KEY, number, type, context, inner, size, stride,
    is_parameter)`` the first time and ``(SUBCLASS_KEY, number)`` after, where ``inner``
    maps its inner tensors' names to the tensors, which are placeholders in turn (and
    flattened again if they are subclasses). Only plain tensors are listed.
    """
    tensors: list[torch.Tensor] = []
    positions: dict[int, int] = {}
    subclasses: dict[int, int] = {}
    kept: list[torch.Tensor] = []  # keeps every flattened object alive, so no id() is reused

    def position(value: Any) -> Hashable | None:
        if not isinstance(value, torch.Tensor):
            return None
        if is_flattenable(value):
            if id(value) in subclasses:
                return (SUBCLASS_KEY, subclasses[id(value)])
            subclasses[id(value)] = len(subclasses)
            kept.append(value)
            inner, context = flatten_subclass(value)
            is_parameter = isinstance(value, nn.Parameter)
            size, stride = tuple(value.shape), tuple(value.stride())
            return (SUBCLASS_KEY, subclasses[id(value)], type(value), context, inner, size, stride, is_parameter)
        if id(value) not in positions:
            positions[id(value)] = len(tensors)
            tensors.append(value)
        return positions[id(value)]

    return dumps_with_placeholders(obj, position), tensors


def join_tensors(skeleton: bytes, tensors: Sequence[Any], *, parameters: bool = True) -> Any:
    """Unpickle ``skeleton`` (from :func:`split_tensors`), putting ``tensors[i]`` where tensor ``i`` was.

    Tensor subclasses are unflattened around their inner tensors (given the original
    size and stride), one object per subclass object of the original; one that was an
    ``nn.Parameter`` is one again (``requires_grad=False``) unless ``parameters`` is False.
    """
    rebuilt: dict[int, Any] = {}

    def resolve(key: Any) -> Any:
        if not isinstance(key, tuple):
            return tensors[int(key)]
        if len(key) == 2:
            return rebuilt[key[1]]
        _, number, cls, context, inner, size, stride, is_parameter = key
        tensor = cls.__tensor_unflatten__(inner, context, torch.Size(size), tuple(stride))
        if is_parameter and parameters:
            tensor = nn.Parameter(tensor, requires_grad=False)
        rebuilt[number] = tensor
        return tensor

    return loads_with_placeholders(skeleton, resolve)
