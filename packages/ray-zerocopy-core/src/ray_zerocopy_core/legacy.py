"""The original project's functions, kept working; each warns and names its replacement.

Every function here is a few lines over the wrappers. New code should use
:class:`~ray_zerocopy_core.wrappers.TaskWrapper`,
:class:`~ray_zerocopy_core.wrappers.ActorWrapper` or
:class:`~ray_zerocopy_core.wrappers.ModelWrapper`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ray
import torch

from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.pipeline import BARE_MODEL, SharedPipeline
from ray_zerocopy_core.store import rebuild_model
from ray_zerocopy_core.wrappers import TaskWrapper


def warn_deprecated(old: str, new: str) -> None:
    """Emit the DeprecationWarning of a legacy function, pointing at the caller's line."""
    warnings.warn(f"{old} is deprecated; use {new} instead.", DeprecationWarning, stacklevel=3)


def rewrite_pipeline(pipeline: Any, method_names: Sequence[str] = ("__call__",)) -> Any:
    """Deprecated: use ``TaskWrapper(pipeline, method_names=...)``.

    Returns ``pipeline`` with each model replaced by a shim that runs calls as Ray tasks.
    """
    warn_deprecated("rewrite_pipeline()", "TaskWrapper(pipeline)")
    return TaskWrapper(pipeline, method_names=method_names).load()


def prepare_model_for_actors(model: torch.nn.Module) -> ray.ObjectRef:
    """Deprecated: use ``ActorWrapper(model)``. Store ``model``; return its ObjectRef."""
    warn_deprecated("prepare_model_for_actors()", "ActorWrapper(model)")
    return SharedPipeline.share(model).refs[BARE_MODEL]


def load_model_in_actor(model_ref: Any, device: str | torch.device | None = None, use_fast_load: bool = False) -> Any:
    """Deprecated: use ``ActorWrapper.load()``. Rebuild a model stored by ``prepare_model_for_actors``.

    ``model_ref`` may be the ObjectRef or the value Ray already resolved from it.
    """
    warn_deprecated("load_model_in_actor()", "ActorWrapper(model).load()")
    return rebuild_model(model_ref, LoadOptions(device=device, use_fast_load=use_fast_load))


def rewrite_pipeline_for_actors(
    pipeline: Any,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
) -> tuple[Any, dict[str, ray.ObjectRef]]:
    """Deprecated: use ``ActorWrapper(pipeline)``. Return ``(skeleton, model_refs)``.

    ``device`` and ``use_fast_load`` are accepted for compatibility; they take effect
    when loading (:func:`load_pipeline_in_actor`).
    """
    warn_deprecated("rewrite_pipeline_for_actors()", "ActorWrapper(pipeline)")
    shared = SharedPipeline.share(pipeline, model_attr_names)
    return shared.skeleton, dict(shared.refs)


def load_pipeline_in_actor(
    pipeline_skeleton: Any,
    model_refs: Mapping[str, Any],
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
) -> Any:
    """Deprecated: use ``ActorWrapper.load()``. Rebuild what ``rewrite_pipeline_for_actors`` stored."""
    warn_deprecated("load_pipeline_in_actor()", "ActorWrapper(pipeline).load()")
    shared = SharedPipeline(pipeline_skeleton, dict(model_refs))
    return shared.load(LoadOptions(device=device, use_fast_load=use_fast_load))
