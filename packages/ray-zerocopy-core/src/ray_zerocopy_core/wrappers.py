"""The public wrappers: one engine, faces for each execution mode.

:class:`ModelWrapper` shares a model or pipeline and is used in either mode.
:class:`TaskWrapper` and :class:`ActorWrapper` are the same engine with the mode fixed.
The TorchScript faces (``ray_zerocopy.JITModelWrapper``...) only change the defaults;
which backend shares each model is always decided by the registry.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Literal

import torch

from ray_zerocopy_core.checkpoint import Checkpoint
from ray_zerocopy_core.errors import InvalidOptionError, UnknownMethodError, WrongModeError
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline, load_pipeline
from ray_zerocopy_core.task_mode import rewrite_for_tasks

Mode = Literal["actor", "task"]
_MODES = ("actor", "task")
#: ``from_model``'s mode when none is given: the class's own (``None`` stays an error).
_DEFAULT_MODE: Any = object()


class ModelWrapper:
    """Share a model, or a pipeline of models, through Ray's object store.

    Each model's weights are written once into the object store; the wrapper itself
    is small (the pipeline skeleton and one ObjectRef per model) and can be passed to
    actors, tasks and Ray Data constructors.

    In **actor** mode, call :meth:`load` inside each worker to get the ready pipeline;
    its weights alias the node's shared memory (read-only). In **task** mode the
    wrapper is used directly: calling it (or a pipeline method) runs each model call as
    a Ray task on a worker that keeps the rebuilt model cached.

    Example::

        wrapper = ModelWrapper.from_model(model, mode="actor")

        @ray.remote
        class Predictor:
            def __init__(self, wrapper):
                self.model = wrapper.load()

    Args:
        model_or_pipeline: an ``nn.Module`` (a ``ScriptModule`` with the ``[jit]`` extra, an
            ``ExportedProgram`` with ``[export]``, or any object an installed backend shares),
            or an object whose attributes are models.
        mode: ``"actor"`` or ``"task"``.
        model_attr_names: the pipeline attributes to share; found automatically if None.
        method_names: task mode only: model methods callable remotely
            (default ``("__call__",)``). ``__call__`` is always callable; a name that no
            model has (a pipeline's own method, say) is ignored with one warning.
        device: where loaded models go: ``None``/``"cpu"`` (zero-copy) or e.g. ``"cuda:0"``.
        use_fast_load: leave parameters as plain tensors instead of ``nn.Parameter``.
        writable: load private, writable copies instead of read-only shared weights
            (parameters still come with ``requires_grad=False``; turn it on to train).
        prefault: after a zero-copy load, fault the weight pages in from a background
            thread, so the first forward runs at full speed sooner.
        task_options: task mode only: Ray options for each task (``num_cpus``,
            ``num_gpus``, ``resources``...).

    The options from ``method_names`` on are keyword-only, and :class:`TaskWrapper` and
    :class:`ActorWrapper` take the same ones. :meth:`serialize` and :meth:`deserialize`
    take a wrapper apart into picklable values and back.
    """

    #: Methods callable through task-mode shims when ``method_names`` is not given.
    default_method_names: ClassVar[tuple[str, ...]] = ("__call__",)
    #: The one mode a subclass stands for (``None``: either, chosen per wrapper).
    fixed_mode: ClassVar[Mode | None] = None

    def __init__(
        self,
        model_or_pipeline: Any,
        mode: Mode = "actor",
        model_attr_names: str | Iterable[str] | None = None,
        *,
        method_names: Sequence[str] | None = None,
        device: str | torch.device | None = None,
        use_fast_load: bool = False,
        writable: bool = False,
        prefault: bool = False,
        task_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in _MODES:
            raise InvalidOptionError(f"mode must be 'actor' or 'task', got {mode!r}.")
        if mode == "actor" and (method_names is not None or task_options):
            raise WrongModeError(
                "method_names and task_options apply to task mode only; use mode='task' "
                "(or ModelWrapper.for_tasks), or drop them for actor mode."
            )
        if isinstance(method_names, str):
            method_names = (method_names,)
        self._mode: Mode = mode
        self._options = LoadOptions(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
        self._task_options = dict(task_options or {})
        requested = (tuple(method_names) if method_names else self.default_method_names) if mode == "task" else None
        self._shared = SharedPipeline.share(model_or_pipeline, model_attr_names, requested)
        self._task_pipeline: Any = None

    @classmethod
    def from_model(
        cls,
        model_or_pipeline: Any,
        mode: Mode = _DEFAULT_MODE,
        model_attr_names: str | Iterable[str] | None = None,
        method_names: Sequence[str] | None = None,
        **options: Any,
    ) -> ModelWrapper:
        """Wrap ``model_or_pipeline`` for ``mode`` (see the class for the options).

        ``mode`` defaults to ``"actor"``, or to the one mode of ``TaskWrapper`` and
        ``ActorWrapper``, which refuse the other one.
        """
        mode = cls._resolve_mode(mode)
        if cls.fixed_mode is None:
            return cls(model_or_pipeline, mode, model_attr_names, method_names=method_names, **options)
        return cls(model_or_pipeline, model_attr_names=model_attr_names, method_names=method_names, **options)

    @classmethod
    def _resolve_mode(cls, mode: Any) -> Mode:
        """``mode`` checked, or the class's own mode when not given (``"actor"`` for ModelWrapper).

        Raises:
            InvalidOptionError: ``mode`` is not ``"actor"`` or ``"task"``.
            WrongModeError: ``TaskWrapper``/``ActorWrapper`` asked for the other mode.
        """
        if mode is _DEFAULT_MODE:
            return cls.fixed_mode or "actor"
        if mode not in _MODES:
            raise InvalidOptionError(f"mode must be 'actor' or 'task', got {mode!r}.")
        if cls.fixed_mode is not None and mode != cls.fixed_mode:
            other = "TaskWrapper" if mode == "task" else "ActorWrapper"
            raise WrongModeError(
                f"{cls.__name__} is for {cls.fixed_mode} mode; for {mode} mode use {other} or "
                f"ModelWrapper.from_model(..., mode={mode!r})."
            )
        return mode

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, mode: Mode = _DEFAULT_MODE, **options: Any) -> ModelWrapper:
        """Wrap the model ``checkpoint`` describes, its weights streamed from the files into the store.

        The result behaves exactly like a wrapper of the built and loaded model
        (``from_model``); this process never holds a private copy of the weights. Takes
        the same options as :meth:`from_model` (``mode`` only on ``ModelWrapper``).

        Example::

            wrapper = ActorWrapper.from_checkpoint(Checkpoint("llama-dir/", AutoModelForCausalLM))
        """
        if not isinstance(checkpoint, Checkpoint):
            raise InvalidOptionError(
                f"from_checkpoint takes a ray_zerocopy.Checkpoint, got {type(checkpoint).__qualname__}. "
                "Describe the files with Checkpoint(path, model), or wrap a built model with from_model."
            )
        return cls.from_model(checkpoint, mode, **options)

    @classmethod
    def for_tasks(
        cls, model_or_pipeline: Any, method_names: Sequence[str] | None = None, **options: Any
    ) -> ModelWrapper:
        """Shortcut for ``from_model(model_or_pipeline, mode="task", ...)``."""
        return cls.from_model(model_or_pipeline, "task", method_names=method_names, **options)

    @classmethod
    def deserialize(
        cls,
        *,
        skeleton: Any,
        model_refs: dict[str, Any],
        mode: Mode = _DEFAULT_MODE,
        method_names: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
        nbytes: dict[str, int] | None = None,
    ) -> ModelWrapper:
        """The wrapper that :meth:`serialize` described: ``ModelWrapper.deserialize(**wrapper.serialize())``.

        Nothing is stored again; the wrapper refers to the same stored models. Like
        unpickling, this fills in a new instance without calling ``__init__``, which would
        store the models.
        """
        mode = cls._resolve_mode(mode)
        wrapper = cls.__new__(cls)
        wrapper.__dict__.update(
            _mode=mode,
            _options=LoadOptions(**(options or {})),
            _task_options=dict(task_options or {}),
            _shared=SharedPipeline(
                skeleton, dict(model_refs), dict(nbytes or {}), method_names=tuple(method_names or ())
            ),
            _task_pipeline=None,
        )
        return wrapper

    def serialize(self) -> dict[str, Any]:
        """This wrapper as a dict of picklable values (the skeleton and the models' references, not weights).

        :meth:`deserialize` turns it back into a wrapper, in this process or another.
        """
        return {
            "skeleton": self._shared.pickled_skeleton(),
            "model_refs": dict(self._shared.refs),
            "mode": self._mode,
            "method_names": list(self._shared.method_names),
            "options": asdict(self._options),
            "task_options": dict(self._task_options),
            "nbytes": dict(self._shared.nbytes),
        }

    @property
    def method_names(self) -> tuple[str, ...]:
        """Task mode: the model methods callable remotely (empty in actor mode)."""
        return self._shared.method_names

    @property
    def model_refs(self) -> dict[str, Any]:
        """Attribute name to the ObjectRef of that stored model (``""`` for a bare model)."""
        return dict(self._shared.refs)

    @property
    def mode(self) -> Mode:
        """The execution mode, ``"actor"`` or ``"task"``."""
        return self._mode

    @property
    def model_names(self) -> list[str]:
        """The shared pipeline attributes (empty for a bare model)."""
        return [] if self._shared.is_bare_model else list(self._shared.refs)

    @property
    def nbytes(self) -> int:
        """Weight bytes in the object store for this wrapper, all models together."""
        return sum(self._shared.nbytes.values())

    @property
    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an actor constructor (e.g. Ray Data ``fn_constructor_kwargs``).

        They match :func:`ray_zerocopy.load_pipeline_in_actor`'s parameters: always
        ``pipeline_skeleton``, ``model_refs``, ``device`` and ``use_fast_load`` (the four
        that constructor protocol takes), plus ``writable`` and
        ``prefault`` when the wrapper sets them, so that a constructor which cannot take
        them fails loudly instead of silently loading shared, read-only weights. Most
        code passes the wrapper itself instead and calls :meth:`load`.
        """
        self._shared.check_available()
        kwargs = {
            "pipeline_skeleton": self._shared.skeleton_object(),
            "model_refs": dict(self._shared.refs),
            "device": self._options.device,
            "use_fast_load": self._options.use_fast_load,
        }
        kwargs.update({name: True for name in ("writable", "prefault") if getattr(self._options, name)})
        return kwargs

    def load(
        self,
        device: str | torch.device | None = None,
        use_fast_load: bool | None = None,
        writable: bool | None = None,
        prefault: bool | None = None,
        **deprecated: Any,
    ) -> Any:
        """Return the ready pipeline (or model).

        Actor mode: rebuild every model in this process; on the CPU the weights alias the
        object store and are read-only (``writable=True`` gives a private copy).
        Task mode: the pipeline with each model replaced by a task-running shim.
        Arguments left as None keep the wrapper's settings. ``_use_fast_load`` (0.x's
        spelling) is accepted with a :class:`DeprecationWarning`.
        """
        if "_use_fast_load" in deprecated:
            warnings.warn(
                "load(_use_fast_load=...) is deprecated; use load(use_fast_load=...) instead.",
                DeprecationWarning,
                stacklevel=2,
            )
            fast = deprecated.pop("_use_fast_load")
            use_fast_load = fast if use_fast_load is None else use_fast_load
        if deprecated:
            raise TypeError(f"load() got unexpected keyword arguments: {', '.join(sorted(deprecated))}")
        options = self._options.merged(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
        if self._mode == "actor":
            return load_pipeline(self._shared, options)
        methods = self._shared.method_names
        if options == self._options:
            if self._task_pipeline is None:
                self._task_pipeline = rewrite_for_tasks(self._shared, methods, options, self._task_options)
            return self._task_pipeline
        return rewrite_for_tasks(self._shared, methods, options, self._task_options)

    def release(self) -> None:
        """Drop the wrapper's references to the stored models.

        Ray frees the objects once no worker still uses them; this wrapper can no
        longer load afterwards (:class:`~ray_zerocopy_core.errors.WrapperReleasedError`).
        """
        self._shared.release()
        self._task_pipeline = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Task mode: call the pipeline (or model); its model calls run as Ray tasks."""
        if self._mode != "task":
            raise WrongModeError(
                f"This {type(self).__name__} is in actor mode and cannot be called. Call "
                ".load() inside the actor and use what it returns, or wrap with mode='task'."
            )
        return self.load()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if self.__dict__.get("_mode") == "task":
            return getattr(self.load(), name)
        raise UnknownMethodError(
            f"{type(self).__name__} has no attribute {name!r}. In actor mode, call .load() in "
            "the worker and use the pipeline it returns."
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_task_pipeline"] = None
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self._mode!r}, models={self.model_names}, nbytes={self.nbytes})"


class TaskWrapper(ModelWrapper):
    """Task mode: each model call runs as a Ray task on shared, cached weights.

    ``TaskWrapper(pipeline)(x)`` runs the pipeline's own ``__call__`` here, with each
    model call sent to a task. Other pipeline attributes and methods are reachable
    through the wrapper, too. ``method_names`` may come second, as in ray-zerocopy 0.x;
    the other options are keyword-only (see :class:`ModelWrapper`).
    """

    fixed_mode: ClassVar[Mode | None] = "task"

    def __init__(
        self,
        pipeline: Any,
        method_names: Sequence[str] | None = None,
        *,
        model_attr_names: str | Iterable[str] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(pipeline, "task", model_attr_names, method_names=method_names, **options)


class ActorWrapper(ModelWrapper):
    """Actor mode: pass the wrapper to actors and call :meth:`load` in their ``__init__``.

    Options after ``model_attr_names`` are keyword-only (see :class:`ModelWrapper`).
    """

    fixed_mode: ClassVar[Mode | None] = "actor"

    def __init__(self, pipeline: Any, model_attr_names: str | Iterable[str] | None = None, **options: Any) -> None:
        super().__init__(pipeline, "actor", model_attr_names, **options)
