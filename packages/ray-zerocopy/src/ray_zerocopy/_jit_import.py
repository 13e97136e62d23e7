"""Import of the optional TorchScript package, with an error that says how to install it."""

from __future__ import annotations

from types import ModuleType

from ray_zerocopy_core.errors import BackendNotInstalledError
from ray_zerocopy_core.registry import KNOWN_BACKENDS

#: The TorchScript wrapper names ``ray_zerocopy`` resolves lazily, once the jit package is found.
JIT_NAMES = frozenset({"JITModelWrapper", "JITTaskWrapper", "JITActorWrapper"})


def import_jit() -> ModuleType:
    """Return ``ray_zerocopy_jit``, or raise ``BackendNotInstalledError`` (an ImportError) naming the fix."""
    try:
        import ray_zerocopy_jit
    except ImportError as exc:
        raise BackendNotInstalledError(
            "TorchScript support needs the ray-zerocopy-jit package. "
            f"Install it with: {KNOWN_BACKENDS['jit'].install_hint}"
        ) from exc
    return ray_zerocopy_jit


def jit_wrapper(name: str) -> type:
    """The TorchScript wrapper class ``name``, once the jit backend is known to be installed."""
    import_jit()
    from ray_zerocopy import _jit_wrappers

    return getattr(_jit_wrappers, name)
