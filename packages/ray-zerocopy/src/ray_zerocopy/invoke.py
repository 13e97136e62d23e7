"""Legacy task-mode entry point, kept for old code: use :class:`ray_zerocopy.TaskWrapper`."""

from ray_zerocopy.legacy import rewrite_pipeline

__all__ = ["rewrite_pipeline"]
