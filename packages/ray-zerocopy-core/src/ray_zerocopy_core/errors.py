"""Error types of ray-zerocopy: one root, one class per kind of mistake or fault."""

from __future__ import annotations

JIT_INSTALL_HINT = "pip install 'ray-zerocopy[jit]'"
EXPORT_INSTALL_HINT = "pip install 'ray-zerocopy[export]'"


class ZeroCopyError(Exception):
    """Root of every error ray-zerocopy raises on purpose."""


class BackendError(ZeroCopyError, LookupError):
    """No backend can take an object, or a named backend is missing or broken."""


class InvalidBackendError(BackendError, TypeError):
    """An object registered as a backend does not implement the backend protocol."""


class BackendNotInstalledError(BackendError, ImportError):
    """The object needs a backend whose distribution is not installed."""


class UnsupportedModelError(ZeroCopyError, TypeError):
    """The model holds something that cannot be shared (meta, sparse or nested tensors...)."""


class PipelineError(ZeroCopyError, ValueError):
    """A pipeline has no model to share, names a missing attribute, or cannot be pickled."""


class WrongModeError(ZeroCopyError, TypeError):
    """A wrapper was used the way the other execution mode is used."""


class InvalidOptionError(ZeroCopyError, ValueError):
    """An option has a value that is not one of those accepted (a mode string, a name empty or taken)."""


class InvalidReferenceError(ZeroCopyError, TypeError):
    """Something other than a stored model's reference was given where one is loaded."""


class UnknownMethodError(ZeroCopyError, AttributeError):
    """A task-mode shim or an actor-mode wrapper was asked for a method it does not offer."""


class FormatVersionError(ZeroCopyError, RuntimeError):
    """A stored model was written by another ray-zerocopy release than the one loading it."""


class ObjectStoreCapacityError(ZeroCopyError, MemoryError):
    """A model is larger than the object store can ever hold."""


class WrapperReleasedError(ZeroCopyError, RuntimeError):
    """The wrapper's stored weights were released; nothing is left to load."""


class WeightsUnavailableError(ZeroCopyError, RuntimeError):
    """The stored weights cannot be fetched, e.g. because their owner process is gone."""


class ModelNotPublishedError(ZeroCopyError, LookupError):
    """No model is published under a name: never published, unpublished, or its holder actor died."""


class CheckpointError(ZeroCopyError, ValueError):
    """Checkpoint files cannot be shared as they are: corrupted, mismatched with the model, or unsafe."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path, or a shard its index names, does not exist."""


class InvalidLoaderError(ZeroCopyError, TypeError):
    """What was given to build a published model is not a picklable zero-argument callable."""


class HolderUnavailableError(ZeroCopyError, TimeoutError, RuntimeError):
    """A holder actor of named models did not start, or did not finish closing, in the time allowed."""
