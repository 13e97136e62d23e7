"""ray-zerocopy-jit: the TorchScript backend and wrappers of ray-zerocopy."""

from __future__ import annotations

from importlib import metadata

from ray_zerocopy_jit.backend import JITBackend
from ray_zerocopy_jit.wrappers import JITActorWrapper, JITModelWrapper, JITTaskWrapper

try:
    __version__ = metadata.version("ray-zerocopy-jit")
except metadata.PackageNotFoundError:
    __version__ = "0+unknown"

__all__ = ["JITActorWrapper", "JITBackend", "JITModelWrapper", "JITTaskWrapper", "__version__"]
