"""ray-zerocopy-jit: the TorchScript backend of ray-zerocopy (its wrappers are ``ray_zerocopy.JIT*Wrapper``)."""

from __future__ import annotations

from importlib import metadata

from ray_zerocopy_jit.backend import JITBackend

try:
    __version__ = metadata.version("ray-zerocopy-jit")
except metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = ["JITBackend", "__version__"]
