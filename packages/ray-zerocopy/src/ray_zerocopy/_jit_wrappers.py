"""The TorchScript wrappers: the core wrappers with TorchScript defaults (same engine).

Reached through ``ray_zerocopy.JIT*Wrapper`` and ``ray_zerocopy.jit``, which first check
that the jit backend is installed (:func:`ray_zerocopy._jit_import.import_jit`).
"""

from __future__ import annotations

from typing import ClassVar

from ray_zerocopy_core.wrappers import ActorWrapper, ModelWrapper, TaskWrapper


class JITModelWrapper(ModelWrapper):
    """:class:`~ray_zerocopy_core.wrappers.ModelWrapper` for TorchScript models.

    Task mode exposes ``__call__`` and ``forward`` by default.
    """

    default_method_names: ClassVar[tuple[str, ...]] = ("__call__", "forward")


class JITTaskWrapper(JITModelWrapper, TaskWrapper):
    """Task mode for TorchScript models (and pipelines of them)."""


class JITActorWrapper(JITModelWrapper, ActorWrapper):
    """Actor mode for TorchScript models (and pipelines of them)."""
