"""The backend protocol: how one model object is split and rebuilt zero-copy.

A backend turns a model into a :class:`ModelPayload` (a weightless skeleton plus a
:class:`~ray_zerocopy_core.representation.TensorTable`) and turns a payload back into a
ready model whose tensors alias the payload's buffers. Backends are found through the
``ray_zerocopy.backends`` entry-point group (see :mod:`ray_zerocopy_core.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from ray_zerocopy_core.representation import TensorTable


@dataclass(frozen=True)
class LoadOptions:
    """How a payload is rebuilt.

    Attributes:
        device: where the rebuilt model goes; ``None`` or ``"cpu"`` keeps it zero-copy
            on the CPU, anything else costs one host-to-device copy.
        use_fast_load: skip wrapping parameters in ``nn.Parameter`` (they stay plain
            tensors); a little faster, for code that never looks at ``.parameters()``
            types.
        prefault: right after a zero-copy load, read every weight page in a background
            thread (``madvise(MADV_POPULATE_READ)``), so the first forward does not pay a
            page fault per 4 KiB; the load itself returns as fast as without it.
        writable: give the model a private, writable copy of the weights instead of
            read-only views of shared memory.
    """

    device: str | torch.device | None = None
    use_fast_load: bool = False
    writable: bool = False
    prefault: bool = False

    @property
    def zero_copy(self) -> bool:
        """Whether the rebuilt tensors will alias the stored bytes."""
        return not self.writable and torch.device(self.device or "cpu").type == "cpu"


@dataclass
class ModelPayload:
    """What one model becomes in the object store: one Ray object per model.

    Attributes:
        backend: name of the backend that made it and must rebuild it.
        skeleton: the model without its weights, in the backend's own format.
        table: the weights as raw bytes plus their index.
        backend_locator: ``module:qualname`` of the backend class, so a worker can import
            it without scanning entry points (filled in when the payload is stored).
    """

    backend: str
    skeleton: bytes
    table: TensorTable
    backend_locator: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes of weights in the payload."""
        return self.table.nbytes


@runtime_checkable
class Backend(Protocol):
    """What a backend provides. Implementations are registered under an entry point.

    ``model_types`` are the classes the backend handles; when several backends handle
    an object, the one whose type is nearest the object's own class in its MRO wins
    (so a ``torch.jit.ScriptModule`` goes to ``jit`` even though it is an ``nn.Module``).
    """

    name: ClassVar[str]
    model_types: ClassVar[tuple[type, ...]]

    def handles(self, obj: object) -> bool:
        """Whether this backend can share ``obj``."""
        ...

    def extract(self, model: Any) -> ModelPayload:
        """Split ``model`` into a skeleton and its weight bytes, without copying weights."""
        ...

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Rebuild a ready (eval-mode) model from ``payload``."""
        ...
