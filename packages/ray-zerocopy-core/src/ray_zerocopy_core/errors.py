"""Error types of ray-zerocopy: one root, two families users catch in one clause, and the rest.

- :class:`UsageError`: the call itself is wrong (an option, a mode, a pipeline, a model
  that cannot be shared, a loader); fix the code.
- :class:`WeightsUnavailableError`: the weights are gone (the wrapper was released, the
  name is not published, the process or node that held them died); wrap or publish again.

Every class also derives from the built-in exception a caller would expect
(``ValueError``, ``TypeError``, ``LookupError``...), so existing ``except`` clauses keep
working.
"""

from __future__ import annotations


class ZeroCopyError(Exception):
    """Root of every error ray-zerocopy raises on purpose."""


# --- the call is wrong -------------------------------------------------------------------


class UsageError(ZeroCopyError, ValueError):
    """A call was made with something ray-zerocopy cannot work with; the message names the fix.

    A ``ValueError`` (a bad argument); its subclasses are also the built-in a caller of
    that kind of call expects (``TypeError``, ``AttributeError``...).
    """


class InvalidOptionError(UsageError):
    """An option has a value that is not one of those accepted (a mode string, a name empty or taken)."""


class WrongModeError(UsageError, TypeError):
    """A wrapper was used the way the other execution mode is used."""


class PipelineError(UsageError):
    """A pipeline has no model to share, names a missing attribute, or cannot be pickled."""


class UnsupportedModelError(UsageError, TypeError):
    """The model holds something that cannot be shared (meta, sparse or nested tensors...)."""


class UnknownMethodError(UsageError, AttributeError):
    """A task-mode shim or an actor-mode wrapper was asked for a method it does not offer."""


class InvalidReferenceError(UsageError, TypeError):
    """Something other than a stored model's reference was given where one is loaded."""


class InvalidLoaderError(UsageError, TypeError):
    """What was given to build a published model is not a picklable zero-argument callable."""


# --- the weights are gone ----------------------------------------------------------------


class WeightsUnavailableError(ZeroCopyError, RuntimeError):
    """The stored weights cannot be loaded any more: released, unpublished, or lost with their owner."""


class WrapperReleasedError(WeightsUnavailableError):
    """The wrapper's stored weights were released; nothing is left to load."""


class WeightsLostError(WeightsUnavailableError):
    """The process or node that owned the stored weights is gone, and no other copy can stand in."""


class ModelNotPublishedError(WeightsUnavailableError, LookupError):
    """No model is published under a name: never published, unpublished, or every copy was lost."""


class HolderUnavailableError(WeightsUnavailableError, TimeoutError):
    """A holder actor of named models did not start, or did not finish closing, in the time allowed."""


# --- backends, checkpoints, the store ----------------------------------------------------


class BackendError(ZeroCopyError, LookupError):
    """No backend can take an object, or a named backend is missing or broken."""


class InvalidBackendError(BackendError, TypeError):
    """An object registered as a backend does not implement the backend protocol."""


class BackendNotInstalledError(BackendError, ImportError):
    """The object needs a backend whose distribution is not installed."""


class CheckpointError(ZeroCopyError, ValueError):
    """Checkpoint files cannot be shared as they are: corrupted, mismatched with the model, or unsafe."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path, or a shard its index names, does not exist."""


class FormatVersionError(ZeroCopyError, RuntimeError):
    """A stored model was written by another ray-zerocopy release than the one loading it."""


class ObjectStoreCapacityError(ZeroCopyError, MemoryError):
    """A model is larger than the object store can ever hold."""


__all__ = [
    "BackendError",
    "BackendNotInstalledError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "FormatVersionError",
    "HolderUnavailableError",
    "InvalidBackendError",
    "InvalidLoaderError",
    "InvalidOptionError",
    "InvalidReferenceError",
    "ModelNotPublishedError",
    "ObjectStoreCapacityError",
    "PipelineError",
    "UnknownMethodError",
    "UnsupportedModelError",
    "UsageError",
    "WeightsLostError",
    "WeightsUnavailableError",
    "WrapperReleasedError",
    "WrongModeError",
    "ZeroCopyError",
]
