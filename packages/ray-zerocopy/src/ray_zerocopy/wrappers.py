"""The wrapper classes under their original module path (``ray_zerocopy.wrappers``)."""

from __future__ import annotations

from typing import Any

from ray_zerocopy._jit_import import JIT_NAMES, jit_wrapper
from ray_zerocopy_core.wrappers import ActorWrapper, ModelWrapper, TaskWrapper


def __getattr__(name: str) -> Any:
    if name in JIT_NAMES:
        return jit_wrapper(name)
    raise AttributeError(f"module 'ray_zerocopy.wrappers' has no attribute {name!r}")


__all__ = ["ActorWrapper", "ModelWrapper", "TaskWrapper"]
