"""Legacy TorchScript task-mode entry point: use :class:`ray_zerocopy.JITTaskWrapper`."""

from ray_zerocopy.jit import rewrite_pipeline

__all__ = ["rewrite_pipeline"]
