"""The plugin SDK: everything a backend needs from core, and nothing else.

A backend (``nn`` in core, ``jit`` and ``export`` in their own distributions, or a
third party's) imports only this module from ``ray_zerocopy_core``. A backend splits
one model into a weightless skeleton plus a :class:`TensorTable`
(:func:`build_table` indexes the tensors without copying them), and rebuilds a model
from a :class:`ModelPayload` (:func:`materialize` turns the table back into tensors the
way the :class:`LoadOptions` ask: zero-copy and write-protected by default). Tensor
subclasses with the traceable-subclass protocol (:func:`is_flattenable`) are stored as
their inner tensors: :func:`split_tensors` does it for any picklable object. A backend
whose skeleton names the places tensors go back to records them as slots
(:class:`TensorSlot`; :func:`index_tensors` stores each tensor object once).

Example: a backend for a plain dict of tensors::

    class DictBackend(Backend):
        name = "dict"
        model_types = (dict,)

        def handles(self, obj):  # refines the default, isinstance(obj, model_types)
            return isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values())

        def extract(self, model):
            names = list(model)
            return ModelPayload(self.name, json.dumps(names).encode(), build_table(list(model.items())))

        def rebuild(self, payload, options):
            names = json.loads(payload.skeleton)
            return dict(zip(names, materialize(payload.table, options)))

Declare it under the entry-point group ``ray_zerocopy.backends`` (see
:data:`ENTRY_POINT_GROUP`) and core finds it; nothing in core changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, ClassVar, Protocol, runtime_checkable

from torch import nn

from ray_zerocopy_core.errors import UnsupportedModelError, ZeroCopyError
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pickling import flatten_subclass, is_flattenable, join_tensors, split_tensors
from ray_zerocopy_core.representation import TensorEntry, TensorTable, build_table, check_shareable
from ray_zerocopy_core.slots import TensorSlot, index_tensors

#: The entry-point group under which distributions declare backends (``name = "module:Class"``).
ENTRY_POINT_GROUP = "ray_zerocopy.backends"

#: Version of the stored layout (chunks, guards, alignment, the head's fields). A reader
#: refuses a model stored with another format or by another ray-zerocopy release.
FORMAT_VERSION = 4


def installed_version(distribution: str) -> str:
    """The installed version of ``distribution``; ``0+unknown`` for a source tree not installed.

    Each distribution of ray-zerocopy sets its ``__version__`` with this, e.g.
    ``__version__ = installed_version("ray-zerocopy-jit")``.
    """
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "0+unknown"


#: The ray-zerocopy release of this process, recorded in every payload it stores.
RELEASE = installed_version("ray-zerocopy-core")


class SourceReading(Protocol):
    """How a payload whose bytes are read from files wants the store to pace its reads.

    The store copies a payload into the object store chunk by chunk; before each chunk
    it says which storages come next (:meth:`read_ahead`: start reading them from disk
    while the current chunk is copied) and after it which are stored (:meth:`release`:
    their pages can go, from this process and from the page cache).
    """

    def read_ahead(self, storages: Sequence[int]) -> None:
        """The storages at these table indices are stored next."""
        ...

    def release(self, storages: Sequence[int]) -> None:
        """The storages at these table indices are stored; their bytes are not read again."""
        ...


@dataclass(frozen=True)
class ModelPayload:
    """What a backend splits one model into, and rebuilds it from.

    Attributes:
        backend: name of the backend that made it and must rebuild it.
        skeleton: the model without its weights, in the backend's own format.
        table: the weights as raw bytes plus their index.
        backend_locator: ``module:qualname`` of the backend class, so a worker can import
            it without scanning entry points (given when the payload is stored).
        reading: for a payload read from files, how the store paces the reads (``None``
            for one whose bytes are in memory).
    """

    backend: str
    skeleton: bytes
    table: TensorTable
    backend_locator: str = ""
    reading: SourceReading | None = field(default=None, compare=False, repr=False)


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. Implementations are registered under an entry point.

    ``model_types`` are the classes the backend handles; when several backends handle
    an object, the one whose type is nearest the object's own class in its MRO wins
    (so a ``torch.jit.ScriptModule`` goes to ``jit`` even though it is an ``nn.Module``).
    A class that names ``Backend`` as its base gets :meth:`handles` from it; any other
    object with these members is a backend too.
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[type, ...]]

    def handles(self, obj: object) -> bool:
        """Whether this backend can share ``obj``: by default, whether it is one of ``model_types``.

        Override it to refine the types (refuse some instances), or to accept objects by
        duck typing; the registry calls ``extract`` only with objects this accepts.
        """
        return isinstance(obj, self.model_types)

    def extract(self, model: Any) -> ModelPayload:
        """Split ``model`` into a skeleton and its weight bytes, without copying weights."""
        ...

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Rebuild a ready (eval-mode) model from ``payload``."""
        ...


@runtime_checkable
class ModelSource(Protocol):
    """Something that describes a model without holding it, and opens into a backend's payload.

    A :class:`~ray_zerocopy_core.checkpoint.Checkpoint` is one: its weights are read from
    its files while it is stored. Wherever a model is accepted, a source is too; the
    registry gives it the backend it names, and it is opened (not extracted) where it is
    shared, which for a published model is the holder's node.
    """

    #: The name of the backend whose payload the source opens into (which rebuilds it).
    backend_name: ClassVar[str]

    def open_payload(self) -> AbstractContextManager[ModelPayload]:
        """Yield the payload; views of the source's data may live only until the block ends."""
        ...


def open_payload(backend: Backend, source: Any) -> AbstractContextManager[ModelPayload]:
    """The payload of ``source``, valid until the block ends: the one way a model or a source is opened.

    A :class:`ModelSource` (a checkpoint) opens itself, and its views may live only as
    long as the block; a model is split by ``backend.extract``.
    """
    if isinstance(source, ModelSource):
        return source.open_payload()
    return nullcontext(backend.extract(source))


def finish_model(model: Any) -> Any:
    """Put a rebuilt module in eval mode (:func:`materialize` already made its parameters grad-free).

    Backends call this last in ``rebuild``; objects that are not ``nn.Module`` pass through.
    """
    if isinstance(model, nn.Module):
        model.eval()
    return model


__all__ = [
    "ENTRY_POINT_GROUP",
    "FORMAT_VERSION",
    "RELEASE",
    "Backend",
    "LoadOptions",
    "ModelPayload",
    "ModelSource",
    "SourceReading",
    "TensorEntry",
    "TensorSlot",
    "TensorTable",
    "UnsupportedModelError",
    "ZeroCopyError",
    "build_table",
    "check_shareable",
    "finish_model",
    "flatten_subclass",
    "index_tensors",
    "installed_version",
    "is_flattenable",
    "join_tensors",
    "materialize",
    "open_payload",
    "split_tensors",
]
