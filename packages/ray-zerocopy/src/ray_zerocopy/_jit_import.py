"""Import of the optional TorchScript package, with an error that says how to install it."""

from __future__ import annotations

from types import ModuleType

from ray_zerocopy_core.errors import JIT_INSTALL_HINT

#: Names ``ray_zerocopy`` forwards to ``ray_zerocopy_jit``.
JIT_NAMES = frozenset({"JITModelWrapper", "JITTaskWrapper", "JITActorWrapper"})


def import_jit() -> ModuleType:
    """Return ``ray_zerocopy_jit``, or raise ImportError naming the install command."""
    try:
        import ray_zerocopy_jit
    except ImportError as exc:
        raise ImportError(
            f"TorchScript support needs the ray-zerocopy-jit package. Install it with: {JIT_INSTALL_HINT}"
        ) from exc
    return ray_zerocopy_jit
