"""ray-zerocopy: share PyTorch models across Ray workers with one copy of the weights per node.

The names users call, from ``ray_zerocopy_core``, plus the TorchScript wrappers
(``JIT*Wrapper``, resolved when first used, so the package works without the ``[jit]``
extra). Every error class is in :mod:`ray_zerocopy.errors`; the deprecated functions of
earlier versions stay importable from here and from their old modules
(:mod:`ray_zerocopy.legacy`), each warning and naming its replacement.

Example::

    import ray
    from ray_zerocopy import ActorWrapper

    wrapper = ActorWrapper(model)          # weights written once to the object store

    @ray.remote
    class Predictor:
        def __init__(self, wrapper):
            self.model = wrapper.load()    # zero-copy, read-only weights

        def predict(self, x):
            return self.model(x)
"""

from __future__ import annotations

from typing import Any

import ray_zerocopy_core
from ray_zerocopy import errors  # noqa: F401  (every error class)
from ray_zerocopy._jit_import import JIT_NAMES, jit_wrapper
from ray_zerocopy.legacy import (  # noqa: F401  (deprecated, importable from here, not in __all__)
    load_model_in_actor,
    load_pipeline_in_actor,
    prepare_model_for_actors,
    rewrite_pipeline,
    rewrite_pipeline_for_actors,
)
from ray_zerocopy_core import *  # noqa: F403  (every name of core's __all__, listed again below)
from ray_zerocopy_core.plugin import installed_version

__version__ = installed_version("ray-zerocopy")


def __getattr__(name: str) -> Any:
    """Resolve the TorchScript wrappers lazily, so core works without the jit package."""
    if name in JIT_NAMES:
        return jit_wrapper(name)
    raise AttributeError(f"module 'ray_zerocopy' has no attribute {name!r}")


__all__ = [*ray_zerocopy_core.__all__, *sorted(JIT_NAMES)]
