"""Error types of ray-zerocopy: one root, one class per kind of mistake or fault."""

from __future__ import annotations

JIT_INSTALL_HINT = "pip install 'ray-zerocopy[jit]'"


class ZeroCopyError(Exception):
    """Root of every error ray-zerocopy raises on purpose."""


class BackendError(ZeroCopyError):
    """No backend can take an object, or a named backend is missing or broken."""


class BackendNotInstalledError(BackendError, ImportError):
    """The object needs a backend whose distribution is not installed."""


class UnsupportedModelError(ZeroCopyError, TypeError):
    """The model holds something that cannot be shared (meta, sparse or nested tensors...)."""


class PipelineError(ZeroCopyError, ValueError):
    """A pipeline has no model to share, names a missing attribute, or cannot be pickled."""


class WrongModeError(ZeroCopyError, TypeError):
    """A wrapper was used the way the other execution mode is used."""


class ObjectStoreCapacityError(ZeroCopyError, MemoryError):
    """A model is larger than the object store can ever hold."""


class WrapperReleasedError(ZeroCopyError, RuntimeError):
    """The wrapper's stored weights were released; nothing is left to load."""


class WeightsUnavailableError(ZeroCopyError, RuntimeError):
    """The stored weights cannot be fetched, e.g. because their owner process is gone."""


class ModelNotPublishedError(ZeroCopyError, LookupError):
    """No model is published under a name: never published, unpublished, or its holder actor died."""
