"""ray-zerocopy-jit: the TorchScript backend of ray-zerocopy (its wrappers are ``ray_zerocopy.JIT*Wrapper``)."""

from __future__ import annotations

from ray_zerocopy_core.plugin import installed_version
from ray_zerocopy_jit.backend import JITBackend

__version__ = installed_version("ray-zerocopy-jit")

__all__ = ["JITBackend", "__version__"]
