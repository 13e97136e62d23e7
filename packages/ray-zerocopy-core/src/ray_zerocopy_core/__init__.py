"""ray-zerocopy core: share PyTorch models across Ray workers with one copy per node.

The eager ``nn.Module`` backend, the backend registry, and the task and actor modes.
Most users import from ``ray_zerocopy`` (the meta package), which re-exports all this.
"""

from __future__ import annotations

from ray_zerocopy_core.checkpoint import Checkpoint
from ray_zerocopy_core.errors import (
    BackendError,
    BackendNotInstalledError,
    CheckpointError,
    CheckpointNotFoundError,
    FormatVersionError,
    HolderUnavailableError,
    InvalidBackendError,
    InvalidLoaderError,
    InvalidOptionError,
    InvalidReferenceError,
    ModelNotPublishedError,
    ObjectStoreCapacityError,
    PipelineError,
    UnknownMethodError,
    UnsupportedModelError,
    WeightsUnavailableError,
    WrapperReleasedError,
    WrongModeError,
    ZeroCopyError,
)
from ray_zerocopy_core.inspection import aliases_object_store
from ray_zerocopy_core.named import (
    PublishedModel,
    get_or_publish,
    list_published,
    load_published,
    publish,
    unpublish,
)
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.plugin import ENTRY_POINT_GROUP, RELEASE, Backend, ModelPayload
from ray_zerocopy_core.registry import (
    backend_for,
    backend_names,
    broken_backends,
    find_backend,
    get_backend,
    register_backend,
)
from ray_zerocopy_core.representation import TensorEntry, TensorTable
from ray_zerocopy_core.task_mode import RemoteModel
from ray_zerocopy_core.wrappers import ActorWrapper, ModelWrapper, TaskWrapper

#: This distribution's release (``0+unknown`` in a source tree that is not installed).
__version__ = RELEASE

__all__ = [
    "ENTRY_POINT_GROUP",
    "ActorWrapper",
    "Backend",
    "BackendError",
    "BackendNotInstalledError",
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "FormatVersionError",
    "HolderUnavailableError",
    "InvalidBackendError",
    "InvalidLoaderError",
    "InvalidOptionError",
    "InvalidReferenceError",
    "LoadOptions",
    "ModelNotPublishedError",
    "ModelPayload",
    "ModelWrapper",
    "ObjectStoreCapacityError",
    "PipelineError",
    "PublishedModel",
    "RemoteModel",
    "TaskWrapper",
    "TensorEntry",
    "TensorTable",
    "UnknownMethodError",
    "UnsupportedModelError",
    "WeightsUnavailableError",
    "WrapperReleasedError",
    "WrongModeError",
    "ZeroCopyError",
    "__version__",
    "aliases_object_store",
    "backend_for",
    "backend_names",
    "broken_backends",
    "find_backend",
    "get_backend",
    "get_or_publish",
    "list_published",
    "load_published",
    "publish",
    "register_backend",
    "unpublish",
]
