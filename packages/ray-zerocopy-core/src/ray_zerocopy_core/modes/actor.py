"""Actor mode: the pipeline is rebuilt once inside a long-lived worker.

The wrapper travels to the actor (as a constructor argument, or in Ray Data's
``fn_constructor_kwargs``) and :func:`load_pipeline` rebuilds it there; every model's
tensors alias the node's object store, so N actors share one copy.
"""

from __future__ import annotations

from typing import Any

from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline


def load_pipeline(shared: SharedPipeline, options: LoadOptions) -> Any:
    """Rebuild ``shared`` in the calling process (an actor's ``__init__``, typically)."""
    return shared.load(options)
