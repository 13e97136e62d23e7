"""The original project's TorchScript functions, kept working; each warns and names its replacement.

Every function is a few lines over the wrappers and the core engine. New code should
use :class:`~ray_zerocopy_jit.wrappers.JITTaskWrapper` or
:class:`~ray_zerocopy_jit.wrappers.JITActorWrapper`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
import torch

from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.legacy import warn_deprecated
from ray_zerocopy_core.pipeline import BARE_MODEL, SharedPipeline
from ray_zerocopy_core.store import rebuild_model
from ray_zerocopy_jit.wrappers import JITTaskWrapper


def rewrite_pipeline(pipeline: Any, method_names: Sequence[str] = ("__call__", "forward")) -> Any:
    """Deprecated: use ``JITTaskWrapper(pipeline, method_names=...)``.

    Returns ``pipeline`` with each ScriptModule replaced by a shim that runs calls as
    Ray tasks on shared weights.
    """
    warn_deprecated("ray_zerocopy.jit.rewrite_pipeline()", "JITTaskWrapper(pipeline)")
    return JITTaskWrapper(pipeline, method_names=method_names).load()


def prepare_jit_model_for_actors(jit_model: torch.jit.ScriptModule) -> ray.ObjectRef:
    """Deprecated: use ``JITActorWrapper(jit_model)``. Store ``jit_model``; return its ObjectRef.

    Raises:
        UnsupportedModelError: ``jit_model`` is not a ScriptModule.
    """
    warn_deprecated("prepare_jit_model_for_actors()", "JITActorWrapper(jit_model)")
    if not isinstance(jit_model, torch.jit.ScriptModule):
        raise UnsupportedModelError(
            f"prepare_jit_model_for_actors() takes a torch.jit.ScriptModule, got "
            f"{type(jit_model).__qualname__}. Use ActorWrapper(model) for eager models."
        )
    return SharedPipeline.share(jit_model).refs[BARE_MODEL]


def load_jit_model_in_actor(
    model_ref: Any, device: str | torch.device | None = None, use_fast_load: bool = False
) -> torch.jit.ScriptModule:
    """Deprecated: use ``JITActorWrapper.load()``. Rebuild what ``prepare_jit_model_for_actors`` stored.

    ``model_ref`` may be the ObjectRef or the value Ray already resolved from it (as
    when the ref is passed top-level to an actor constructor).
    """
    warn_deprecated("load_jit_model_in_actor()", "JITActorWrapper(jit_model).load()")
    return rebuild_model(model_ref, LoadOptions(device=device, use_fast_load=use_fast_load))


def rewrite_pipeline_for_actors(
    pipeline: Any,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
) -> tuple[Any, dict[str, ray.ObjectRef]]:
    """Deprecated: use ``JITActorWrapper(pipeline)``. Return ``(skeleton, model_refs)``.

    ``device`` and ``use_fast_load`` are accepted for compatibility; they take effect
    when loading (:func:`load_pipeline_in_actor`).
    """
    warn_deprecated("ray_zerocopy.jit.rewrite_pipeline_for_actors()", "JITActorWrapper(pipeline)")
    shared = SharedPipeline.share(pipeline, model_attr_names)
    return shared.skeleton, dict(shared.refs)


def load_pipeline_in_actor(
    pipeline_skeleton: Any,
    model_refs: Mapping[str, Any],
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
) -> Any:
    """Deprecated: use ``JITActorWrapper.load()``. Rebuild what ``rewrite_pipeline_for_actors`` stored."""
    warn_deprecated("ray_zerocopy.jit.load_pipeline_in_actor()", "JITActorWrapper(pipeline).load()")
    shared = SharedPipeline(pipeline_skeleton, dict(model_refs))
    return shared.load(LoadOptions(device=device, use_fast_load=use_fast_load))


__all__ = [
    "load_jit_model_in_actor",
    "load_pipeline_in_actor",
    "prepare_jit_model_for_actors",
    "rewrite_pipeline",
    "rewrite_pipeline_for_actors",
]
