"""The function API of earlier versions, kept working; every call warns and names its replacement.

Earlier versions had one family of functions per model kind: the eager ones
(``ray_zerocopy``, ``ray_zerocopy.invoke``, ``ray_zerocopy.actor``) and the
TorchScript ones (``ray_zerocopy.jit``, ``ray_zerocopy.jit.invoke``,
``ray_zerocopy.jit.actor``). Both families are defined here once, over the public
wrappers: a family is only the pair of wrapper classes it stands for
(``TaskWrapper``/``ActorWrapper`` or ``JITTaskWrapper``/``JITActorWrapper``), which
fix the defaults and name the replacement in the warning. Which backend shares each
model is decided by the registry either way.

New code should use the wrappers; :doc:`/migration` shows each replacement.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from ray_zerocopy._jit_import import import_jit
from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.pipeline import SharedPipeline
from ray_zerocopy_core.store import rebuild_model
from ray_zerocopy_core.wrappers import ActorWrapper, TaskWrapper

Device = str | torch.device | None


@dataclass(frozen=True)
class Family:
    """One family of legacy functions: where users imported it from, and its replacements.

    Attributes:
        module: the import path shown in warnings (``"ray_zerocopy"`` or ``"ray_zerocopy.jit"``).
        task_wrapper: the name of the task-mode replacement class.
        actor_wrapper: the name of the actor-mode replacement class.
        jit: whether the replacement classes come from the optional jit package.
    """

    module: str
    task_wrapper: str
    actor_wrapper: str
    jit: bool

    def wrapper_class(self, name: str) -> Any:
        """The replacement class called ``name`` (imported on first use for TorchScript)."""
        if self.jit:
            return getattr(import_jit(), name)
        return {"TaskWrapper": TaskWrapper, "ActorWrapper": ActorWrapper}[name]

    def warn(self, function: str, replacement: str) -> None:
        """Emit the DeprecationWarning of ``function``, pointing at the line that called it."""
        old = f"{self.module}.{function}()" if self.jit else f"{function}()"
        warnings.warn(f"{old} is deprecated; use {replacement} instead.", DeprecationWarning, stacklevel=4)

    # The shared bodies. Each public function below is one call to one of these.

    def rewrite_pipeline(self, pipeline: Any, method_names: Sequence[str]) -> Any:
        """Task mode: the pipeline with each model replaced by a task-running shim."""
        self.warn("rewrite_pipeline", f"{self.task_wrapper}(pipeline)")
        return self.wrapper_class(self.task_wrapper)(pipeline, method_names=method_names).load()

    def prepare_model(self, function: str, model: Any) -> ray.ObjectRef:
        """Store one model; return the ObjectRef of its stored form."""
        self.warn(function, f"{self.actor_wrapper}(model)")
        if self.jit and not isinstance(model, torch.jit.ScriptModule):
            raise UnsupportedModelError(
                f"{function}() takes a torch.jit.ScriptModule, got {type(model).__qualname__}. "
                "Use ActorWrapper(model) for eager models."
            )
        wrapper = self.wrapper_class(self.actor_wrapper)(model)
        if wrapper.model_names != [""]:
            raise UnsupportedModelError(
                f"{function}() takes one model, got a pipeline ({type(model).__qualname__}); "
                f"use {self.actor_wrapper}(pipeline)."
            )
        (ref,) = wrapper.constructor_kwargs["model_refs"].values()
        return ref

    def load_model(self, function: str, model_ref: Any, device: Device, use_fast_load: bool) -> Any:
        """Rebuild a model stored by :meth:`prepare_model` (its ObjectRef or the resolved value)."""
        self.warn(function, f"{self.actor_wrapper}(model).load()")
        return rebuild_model(model_ref, LoadOptions(device=device, use_fast_load=use_fast_load))

    def share_pipeline(
        self, pipeline: Any, model_attr_names: Iterable[str] | None
    ) -> tuple[Any, dict[str, ray.ObjectRef]]:
        """Store each model of ``pipeline``; return the skeleton and the refs by attribute."""
        self.warn("rewrite_pipeline_for_actors", f"{self.actor_wrapper}(pipeline)")
        shared = self.wrapper_class(self.actor_wrapper)(pipeline, model_attr_names=model_attr_names)
        kwargs = shared.constructor_kwargs
        return kwargs["pipeline_skeleton"], kwargs["model_refs"]

    def load_pipeline(self, skeleton: Any, model_refs: Mapping[str, Any], device: Device, use_fast_load: bool) -> Any:
        """Rebuild what :meth:`share_pipeline` stored."""
        self.warn("load_pipeline_in_actor", f"{self.actor_wrapper}(pipeline).load()")
        shared = SharedPipeline(skeleton, dict(model_refs))
        return shared.load(LoadOptions(device=device, use_fast_load=use_fast_load))


#: The eager functions (``ray_zerocopy``, ``ray_zerocopy.invoke``, ``ray_zerocopy.actor``).
EAGER = Family("ray_zerocopy", "TaskWrapper", "ActorWrapper", jit=False)
#: The TorchScript functions (``ray_zerocopy.jit``, ``.jit.invoke``, ``.jit.actor``).
JIT = Family("ray_zerocopy.jit", "JITTaskWrapper", "JITActorWrapper", jit=True)


# Eager models: ray_zerocopy, ray_zerocopy.invoke, ray_zerocopy.actor.


def rewrite_pipeline(pipeline: Any, method_names: Sequence[str] = ("__call__",)) -> Any:
    """Deprecated: use ``TaskWrapper(pipeline, method_names=...)``.

    Returns ``pipeline`` with each model replaced by a shim that runs calls as Ray tasks
    (what ``TaskWrapper(pipeline).load()`` returns).
    """
    return EAGER.rewrite_pipeline(pipeline, method_names)


def prepare_model_for_actors(model: torch.nn.Module) -> ray.ObjectRef:
    """Deprecated: use ``ActorWrapper(model)``. Store ``model``; return its ObjectRef."""
    return EAGER.prepare_model("prepare_model_for_actors", model)


def load_model_in_actor(model_ref: Any, device: Device = None, use_fast_load: bool = False) -> Any:
    """Deprecated: use ``ActorWrapper.load()``. Rebuild a model stored by ``prepare_model_for_actors``.

    ``model_ref`` may be the ObjectRef or the value Ray already resolved from it.
    """
    return EAGER.load_model("load_model_in_actor", model_ref, device, use_fast_load)


def rewrite_pipeline_for_actors(
    pipeline: Any,
    model_attr_names: Iterable[str] | None = None,
    device: Device = None,
    use_fast_load: bool = False,
) -> tuple[Any, dict[str, ray.ObjectRef]]:
    """Deprecated: use ``ActorWrapper(pipeline)``. Return ``(skeleton, model_refs)``.

    ``device`` and ``use_fast_load`` are accepted for compatibility; they take effect
    when loading (:func:`load_pipeline_in_actor`).
    """
    return EAGER.share_pipeline(pipeline, model_attr_names)


def load_pipeline_in_actor(
    pipeline_skeleton: Any,
    model_refs: Mapping[str, Any],
    device: Device = None,
    use_fast_load: bool = False,
) -> Any:
    """Deprecated: use ``ActorWrapper.load()``. Rebuild what ``rewrite_pipeline_for_actors`` stored."""
    return EAGER.load_pipeline(pipeline_skeleton, model_refs, device, use_fast_load)


# TorchScript models: ray_zerocopy.jit, ray_zerocopy.jit.invoke, ray_zerocopy.jit.actor
# (which import these under the names without ``jit_``).


def jit_rewrite_pipeline(pipeline: Any, method_names: Sequence[str] = ("__call__", "forward")) -> Any:
    """Deprecated: use ``JITTaskWrapper(pipeline, method_names=...)``.

    ``ray_zerocopy.jit.rewrite_pipeline``: returns ``pipeline`` with each ScriptModule
    replaced by a shim that runs calls as Ray tasks on shared weights.
    """
    return JIT.rewrite_pipeline(pipeline, method_names)


def prepare_jit_model_for_actors(jit_model: torch.jit.ScriptModule) -> ray.ObjectRef:
    """Deprecated: use ``JITActorWrapper(jit_model)``. Store ``jit_model``; return its ObjectRef.

    Raises:
        UnsupportedModelError: ``jit_model`` is not a ScriptModule.
    """
    return JIT.prepare_model("prepare_jit_model_for_actors", jit_model)


def load_jit_model_in_actor(model_ref: Any, device: Device = None, use_fast_load: bool = False) -> Any:
    """Deprecated: use ``JITActorWrapper.load()``. Rebuild what ``prepare_jit_model_for_actors`` stored.

    ``model_ref`` may be the ObjectRef or the value Ray already resolved from it (as
    when the ref is passed top-level to an actor constructor).
    """
    return JIT.load_model("load_jit_model_in_actor", model_ref, device, use_fast_load)


def jit_rewrite_pipeline_for_actors(
    pipeline: Any,
    model_attr_names: Iterable[str] | None = None,
    device: Device = None,
    use_fast_load: bool = False,
) -> tuple[Any, dict[str, ray.ObjectRef]]:
    """Deprecated: use ``JITActorWrapper(pipeline)``. Return ``(skeleton, model_refs)``.

    ``ray_zerocopy.jit.actor.rewrite_pipeline_for_actors``. ``device`` and
    ``use_fast_load`` take effect when loading (:func:`jit_load_pipeline_in_actor`).
    """
    return JIT.share_pipeline(pipeline, model_attr_names)


def jit_load_pipeline_in_actor(
    pipeline_skeleton: Any,
    model_refs: Mapping[str, Any],
    device: Device = None,
    use_fast_load: bool = False,
) -> Any:
    """Deprecated: use ``JITActorWrapper.load()``. Rebuild what ``rewrite_pipeline_for_actors`` stored.

    ``ray_zerocopy.jit.actor.load_pipeline_in_actor``.
    """
    return JIT.load_pipeline(pipeline_skeleton, model_refs, device, use_fast_load)


__all__ = [
    "jit_load_pipeline_in_actor",
    "jit_rewrite_pipeline",
    "jit_rewrite_pipeline_for_actors",
    "load_jit_model_in_actor",
    "load_model_in_actor",
    "load_pipeline_in_actor",
    "prepare_jit_model_for_actors",
    "prepare_model_for_actors",
    "rewrite_pipeline",
    "rewrite_pipeline_for_actors",
]
