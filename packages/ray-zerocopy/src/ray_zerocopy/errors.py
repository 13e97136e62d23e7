"""Every error class of ray-zerocopy (those of ``ray_zerocopy_core.errors``), under the package users import.

Catch :class:`UsageError` for calls that must be fixed, :class:`WeightsUnavailableError`
for weights that are gone (released, unpublished, lost with their node), or
:class:`ZeroCopyError` for both and the rest.
"""

from ray_zerocopy_core.errors import *  # noqa: F403
from ray_zerocopy_core.errors import __all__ as __all__
