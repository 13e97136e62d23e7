"""Actor mode: the pipeline is rebuilt once inside a long-lived worker.

The wrapper travels to the actor (as a constructor argument, or in Ray Data's
``fn_constructor_kwargs``) and :func:`load_pipeline` rebuilds every model there; on
the CPU each model's tensors alias the node's object store, so N actors share one copy.
"""

from __future__ import annotations

from typing import Any

from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline
from ray_zerocopy_core.sharing import rebuild_model


def load_pipeline(shared: SharedPipeline, options: LoadOptions) -> Any:
    """Rebuild every model of ``shared`` in the calling process and return the assembled pipeline.

    Raises:
        WrapperReleasedError: the wrapper's models were released.
        WeightsUnavailableError: the stored weights' owner is gone.
    """
    shared.check_available()
    return shared.assemble({name: rebuild_model(ref, options) for name, ref in shared.refs.items()})
