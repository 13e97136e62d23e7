"""Legacy TorchScript task-mode entry point: use :class:`ray_zerocopy.JITTaskWrapper`."""

from ray_zerocopy_jit.legacy import rewrite_pipeline

__all__ = ["rewrite_pipeline"]
