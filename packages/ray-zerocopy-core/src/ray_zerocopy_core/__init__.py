"""ray-zerocopy core: share PyTorch models across Ray workers with one copy of the weights per node.

This module holds what users call: the wrappers, :class:`Checkpoint`, the named-model
functions and the error families. Most users import the same names from
``ray_zerocopy`` (the package that adds the TorchScript wrappers). The plugin SDK lives in
:mod:`ray_zerocopy_core.plugin`, the backend registry in :mod:`ray_zerocopy_core.registry`,
every error class in :mod:`ray_zerocopy_core.errors`. Importing has no side effects:
nothing is registered and no Ray actor or task is defined until it is used.
"""

from __future__ import annotations

from ray_zerocopy_core.checkpoint import Checkpoint
from ray_zerocopy_core.errors import UsageError, WeightsUnavailableError, ZeroCopyError
from ray_zerocopy_core.inspection import aliases_object_store
from ray_zerocopy_core.named import (
    PublishedModel,
    get_or_publish,
    list_published,
    load_published,
    publish,
    replicate,
    unpublish,
)
from ray_zerocopy_core.plugin import RELEASE
from ray_zerocopy_core.wrappers import ActorWrapper, ModelWrapper, TaskWrapper

#: This distribution's release (``0+unknown`` in a source tree that is not installed).
__version__ = RELEASE

__all__ = [
    "ActorWrapper",
    "Checkpoint",
    "ModelWrapper",
    "PublishedModel",
    "TaskWrapper",
    "UsageError",
    "WeightsUnavailableError",
    "ZeroCopyError",
    "__version__",
    "aliases_object_store",
    "get_or_publish",
    "list_published",
    "load_published",
    "publish",
    "replicate",
    "unpublish",
]
