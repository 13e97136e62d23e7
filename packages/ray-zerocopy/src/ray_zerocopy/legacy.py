"""The function API of earlier versions, kept working; every call warns and names its replacement.

Earlier versions had one family of functions per model kind: the eager ones
(``ray_zerocopy``, ``ray_zerocopy.invoke``, ``ray_zerocopy.actor``) and the
TorchScript ones (``ray_zerocopy.jit``, ``ray_zerocopy.jit.invoke``,
``ray_zerocopy.jit.actor``). Both are written once, as the methods of
:class:`Family`, over the public wrappers; each function of this module is such a
method bound to :data:`EAGER` or :data:`JIT`. A family is only the pair of wrapper
classes it stands for (``TaskWrapper``/``ActorWrapper`` or
``JITTaskWrapper``/``JITActorWrapper``): they give the defaults and the replacement
each warning names. Which backend shares each model is decided by the registry either
way.

New code should use the wrappers; :doc:`/migration` shows each replacement.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import ray
import torch

from ray_zerocopy._jit_import import jit_wrapper
from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.modes.actor import load_pipeline
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline
from ray_zerocopy_core.sharing import rebuild_model
from ray_zerocopy_core.wrappers import ActorWrapper, TaskWrapper

Device = str | torch.device | None


@dataclass(frozen=True)
class Family:
    """One family of legacy functions: where users imported it from, and its replacements.

    Attributes:
        module: the import path shown in warnings (``"ray_zerocopy"`` or ``"ray_zerocopy.jit"``).
        task_wrapper: the name of the task-mode replacement class.
        actor_wrapper: the name of the actor-mode replacement class.
        jit: whether this is the TorchScript family, whose replacement classes come from
            the optional jit package and whose one-model functions take a ScriptModule.
    """

    module: str
    task_wrapper: str
    actor_wrapper: str
    jit: bool

    def _wrapper_class(self, name: str) -> Any:
        """The replacement class called ``name`` (imported on first use for TorchScript)."""
        if self.jit:
            return jit_wrapper(name)
        return {"TaskWrapper": TaskWrapper, "ActorWrapper": ActorWrapper}[name]

    def _model_function(self, verb: str) -> str:
        """The name of a one-model function: ``prepare_model_for_actors``, ``load_jit_model_in_actor``..."""
        model = "jit_model" if self.jit else "model"
        return f"prepare_{model}_for_actors" if verb == "prepare" else f"load_{model}_in_actor"

    def _warn(self, function: str, replacement: str) -> None:
        """Emit the DeprecationWarning of ``function``, pointing at the line that called it."""
        old = f"{self.module}.{function}()" if self.jit else f"{function}()"
        warnings.warn(f"{old} is deprecated; use {replacement} instead.", DeprecationWarning, stacklevel=3)

    def rewrite_pipeline(self, pipeline: Any, method_names: Sequence[str] | None = None) -> Any:
        """Deprecated: use ``TaskWrapper(pipeline, method_names=...)`` (``JITTaskWrapper`` for TorchScript).

        Returns ``pipeline`` with each model replaced by a shim that runs calls as Ray
        tasks on shared weights: what ``TaskWrapper(pipeline).load()`` returns.
        ``method_names`` defaults to the wrapper's (``("__call__",)``, and
        ``("__call__", "forward")`` for TorchScript).
        """
        self._warn("rewrite_pipeline", f"{self.task_wrapper}(pipeline)")
        return self._wrapper_class(self.task_wrapper)(pipeline, method_names=method_names).load()

    def prepare_model_for_actors(self, model: Any) -> ray.ObjectRef:
        """Deprecated: use ``ActorWrapper(model)`` (``JITActorWrapper`` for TorchScript).

        Store one model; return the ObjectRef of its stored form, for
        :func:`load_model_in_actor`.

        Raises:
            UnsupportedModelError: ``model`` is a pipeline, or (TorchScript) not a ScriptModule.
        """
        function = self._model_function("prepare")
        self._warn(function, f"{self.actor_wrapper}(model)")
        if self.jit and not isinstance(model, torch.jit.ScriptModule):
            raise UnsupportedModelError(
                f"{function}() takes a torch.jit.ScriptModule, got {type(model).__qualname__}. "
                "Use ActorWrapper(model) for eager models."
            )
        wrapper = self._wrapper_class(self.actor_wrapper)(model)
        if wrapper.model_names:
            raise UnsupportedModelError(
                f"{function}() takes one model, got a pipeline ({type(model).__qualname__}); "
                f"use {self.actor_wrapper}(pipeline)."
            )
        (ref,) = wrapper.constructor_kwargs["model_refs"].values()
        return ref

    def load_model_in_actor(self, model_ref: Any, device: Device = None, use_fast_load: bool = False) -> Any:
        """Deprecated: use ``ActorWrapper.load()`` (``JITActorWrapper`` for TorchScript).

        Rebuild a model stored by :func:`prepare_model_for_actors`. ``model_ref`` may be
        the ObjectRef or the value Ray already resolved from it (as when the ref is
        passed top-level to an actor constructor).
        """
        self._warn(self._model_function("load"), f"{self.actor_wrapper}(model).load()")
        return rebuild_model(model_ref, LoadOptions(device=device, use_fast_load=use_fast_load))

    def rewrite_pipeline_for_actors(
        self,
        pipeline: Any,
        model_attr_names: Iterable[str] | None = None,
        device: Device = None,
        use_fast_load: bool = False,
    ) -> tuple[Any, dict[str, ray.ObjectRef]]:
        """Deprecated: use ``ActorWrapper(pipeline)`` (``JITActorWrapper`` for TorchScript).

        Store each model of ``pipeline``; return ``(skeleton, model_refs)``. ``device``
        and ``use_fast_load`` are accepted for compatibility; they take effect when
        loading (:func:`load_pipeline_in_actor`).
        """
        self._warn("rewrite_pipeline_for_actors", f"{self.actor_wrapper}(pipeline)")
        wrapper = self._wrapper_class(self.actor_wrapper)(pipeline, model_attr_names=model_attr_names)
        kwargs = wrapper.constructor_kwargs
        return kwargs["pipeline_skeleton"], kwargs["model_refs"]

    def load_pipeline_in_actor(
        self,
        pipeline_skeleton: Any,
        model_refs: Mapping[str, Any],
        device: Device = None,
        use_fast_load: bool = False,
        writable: bool = False,
        prefault: bool = False,
    ) -> Any:
        """Deprecated: use ``ActorWrapper.load()`` (``JITActorWrapper`` for TorchScript).

        Rebuild what :func:`rewrite_pipeline_for_actors` stored; ``wrapper.constructor_kwargs``
        gives these arguments too.
        """
        self._warn("load_pipeline_in_actor", f"{self.actor_wrapper}(pipeline).load()")
        shared = SharedPipeline(pipeline_skeleton, dict(model_refs))
        options = LoadOptions(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
        return load_pipeline(shared, options)


#: The eager functions (``ray_zerocopy``, ``ray_zerocopy.invoke``, ``ray_zerocopy.actor``).
EAGER = Family("ray_zerocopy", "TaskWrapper", "ActorWrapper", jit=False)
#: The TorchScript functions (``ray_zerocopy.jit``, ``.jit.invoke``, ``.jit.actor``).
JIT = Family("ray_zerocopy.jit", "JITTaskWrapper", "JITActorWrapper", jit=True)

# Eager models: ray_zerocopy, ray_zerocopy.invoke, ray_zerocopy.actor.
rewrite_pipeline = EAGER.rewrite_pipeline
prepare_model_for_actors = EAGER.prepare_model_for_actors
load_model_in_actor = EAGER.load_model_in_actor
rewrite_pipeline_for_actors = EAGER.rewrite_pipeline_for_actors
load_pipeline_in_actor = EAGER.load_pipeline_in_actor

# TorchScript models: ray_zerocopy.jit, ray_zerocopy.jit.invoke and ray_zerocopy.jit.actor
# import these under the names without ``jit_``.
jit_rewrite_pipeline = JIT.rewrite_pipeline
prepare_jit_model_for_actors = JIT.prepare_model_for_actors
load_jit_model_in_actor = JIT.load_model_in_actor
jit_rewrite_pipeline_for_actors = JIT.rewrite_pipeline_for_actors
jit_load_pipeline_in_actor = JIT.load_pipeline_in_actor

__all__ = [
    "EAGER",
    "JIT",
    "Family",
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
