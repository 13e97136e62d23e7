"""The public wrappers: share a model or pipeline once, then load it in actors or call it in tasks.

:class:`ActorWrapper` (load the pipeline inside each actor) and :class:`TaskWrapper`
(each model call runs as a Ray task) share one base, :class:`ModelWrapper`, which also
builds either from a mode string (``ModelWrapper.from_model(model, mode="task")``). The
TorchScript wrappers (``ray_zerocopy.JITModelWrapper``...) only change defaults; which
backend shares each model is always decided by the registry.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from ray_zerocopy_core.cluster import Progress, target_nodes
from ray_zerocopy_core.errors import InvalidOptionError, UnknownMethodError, WrongModeError
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline
from ray_zerocopy_core.plugin import ModelSource
from ray_zerocopy_core.task_mode import rewrite_for_tasks

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ray_zerocopy_core.options import LoadOverrides

Mode = Literal["actor", "task"]
_MODES: tuple[Mode, ...] = ("actor", "task")
#: ``from_model``'s mode when none is given: the class's own (``None`` stays an error).
_DEFAULT_MODE: Any = object()


class _WrapperType(type):
    """Calling a class without a mode of its own (``ModelWrapper(model, mode="task")``) is ``from_model``."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if getattr(cls, "mode", None) is None:
            return cls.from_model(*args, **kwargs)  # type: ignore[attr-defined]
        return super().__call__(*args, **kwargs)


class ModelWrapper(metaclass=_WrapperType):
    """Share a model, or a pipeline of models, through Ray's object store.

    Each model's weights are written once into the object store; the wrapper itself
    is small (the pickled pipeline and one ObjectRef per model) and can be passed to
    actors, tasks and Ray Data constructors. A wrapper is an :class:`ActorWrapper`
    (call :meth:`ActorWrapper.load` inside each worker; the weights alias the node's
    shared memory, read-only) or a :class:`TaskWrapper` (call it, or a pipeline method,
    and each model call runs as a Ray task on a worker that keeps the model cached).
    ``ModelWrapper`` builds either from a mode string.

    Example::

        wrapper = ModelWrapper.from_model(model, mode="actor")   # an ActorWrapper

        @ray.remote
        class Predictor:
            def __init__(self, wrapper):
                self.model = wrapper.load()

    Options, taken by every wrapper class and keyword-only after the model and the
    mode's own second argument:

    - ``model_attr_names``: the pipeline attributes to share; found automatically if None.
    - ``method_names`` (task mode): model methods callable remotely (default
      ``("__call__",)``); ``__call__`` is always callable, and a name no model has (a
      pipeline's own method, say) is ignored with one warning.
    - ``task_options`` (task mode): Ray options for each task (``num_cpus``,
      ``num_gpus``, ``resources``...).
    - ``device``: where loaded models go: ``None``/``"cpu"`` (zero-copy) or e.g. ``"cuda:0"``.
    - ``use_fast_load``: leave parameters as plain tensors instead of ``nn.Parameter``.
    - ``writable``: load private, writable copies instead of read-only shared weights
      (parameters still come with ``requires_grad=False``; turn it on to train).
    - ``prefault``: after a zero-copy load, fault the weight pages in from a background
      thread, so the first forward runs at full speed sooner.

    :meth:`serialize` and :meth:`deserialize` take a wrapper apart into picklable values
    and back.
    """

    #: Methods callable through task-mode shims when ``method_names`` is not given.
    default_method_names: ClassVar[tuple[str, ...]] = ("__call__",)
    #: The execution mode of the class (``None`` for a class that builds either).
    mode: ClassVar[Mode | None] = None

    _shared: SharedPipeline
    _options: LoadOptions

    # --- building -------------------------------------------------------------------------

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

        ``mode`` defaults to ``"actor"``, or to the mode of ``TaskWrapper`` and
        ``ActorWrapper``, which refuse the other one.

        Raises:
            InvalidOptionError: ``mode`` is not ``"actor"`` or ``"task"``.
            WrongModeError: a task-mode option in actor mode, or a mode class asked for the other mode.
        """
        target: Any = cls._class_for(mode)
        if target.mode == "task":
            return target(model_or_pipeline, method_names, model_attr_names=model_attr_names, **options)
        if method_names is not None or options.pop("task_options", None):
            raise WrongModeError(
                "method_names and task_options apply to task mode only; use mode='task' "
                "(or ModelWrapper.for_tasks), or drop them for actor mode."
            )
        return target(model_or_pipeline, model_attr_names, **options)

    @classmethod
    def for_tasks(
        cls, model_or_pipeline: Any, method_names: Sequence[str] | None = None, **options: Any
    ) -> ModelWrapper:
        """This family's task-mode wrapper: ``from_model(model_or_pipeline, mode="task", ...)``.

        On a class of a fixed mode it builds that class's task-mode sibling (an
        ``ActorWrapper``'s is ``TaskWrapper``, a ``JITActorWrapper``'s ``JITTaskWrapper``).
        """
        return cls._family().from_model(model_or_pipeline, "task", method_names=method_names, **options)

    @classmethod
    def from_checkpoint(cls, checkpoint: ModelSource, mode: Mode = _DEFAULT_MODE, **options: Any) -> ModelWrapper:
        """Wrap the model ``checkpoint`` describes, its weights streamed from the files into the store.

        The result behaves exactly like a wrapper of the built and loaded model
        (``from_model``); this process never holds a private copy of the weights. Takes
        the same options as :meth:`from_model`.

        Example::

            wrapper = ActorWrapper.from_checkpoint(Checkpoint("llama-dir/", AutoModelForCausalLM))
        """
        if not isinstance(checkpoint, ModelSource):
            raise InvalidOptionError(
                f"from_checkpoint takes a ray_zerocopy.Checkpoint, got {type(checkpoint).__qualname__}. "
                "Describe the files with Checkpoint(path, model), or wrap a built model with from_model."
            )
        return cls.from_model(checkpoint, mode, **options)

    @classmethod
    def deserialize(
        cls,
        *,
        pipeline: bytes | Any,
        model_refs: dict[str, Any],
        mode: Mode = _DEFAULT_MODE,
        method_names: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
        task_options: dict[str, Any] | None = None,
        nbytes: dict[str, int] | None = None,
        copies: Any = None,
    ) -> ModelWrapper:
        """The wrapper that :meth:`serialize` described: ``ModelWrapper.deserialize(**wrapper.serialize())``.

        Nothing is stored again; the wrapper refers to the same stored models (and, on a
        cluster, the same copies on other nodes). ``pipeline`` may also be a pipeline
        object with its models set to ``None``.
        """
        target = cls._class_for(mode)
        shared = SharedPipeline.from_parts(pipeline, model_refs, nbytes, method_names or (), copies)
        return target._from_parts(shared, LoadOptions(**(options or {})), task_options)

    @classmethod
    def _from_parts(
        cls, shared: SharedPipeline, options: LoadOptions, task_options: dict[str, Any] | None = None
    ) -> ModelWrapper:
        """A wrapper of this class over models stored already (what ``deserialize`` gives)."""
        wrapper = object.__new__(cls)
        wrapper._set_parts(shared, options, task_options)
        return wrapper

    def _set_parts(self, shared: SharedPipeline, options: LoadOptions, task_options: dict[str, Any] | None) -> None:
        """The one place a wrapper's state is set, whether it stored its models or was given them."""
        self._shared = shared
        self._options = options

    @classmethod
    def _family(cls) -> type[ModelWrapper]:
        """The nearest class of ``cls``'s line that builds either mode (``ModelWrapper``, ``JITModelWrapper``)."""
        return next(k for k in cls.__mro__ if issubclass(k, ModelWrapper) and k.mode is None)

    @classmethod
    def _class_for(cls, mode: Any) -> type[ModelWrapper]:
        """The class that wraps for ``mode``: ``cls`` itself if it has that mode, else its family's.

        Raises:
            InvalidOptionError: ``mode`` is not ``"actor"`` or ``"task"``.
            WrongModeError: ``cls`` is of the other mode.
        """
        if mode is _DEFAULT_MODE:
            mode = cls.mode or "actor"
        if mode not in _MODES:
            raise InvalidOptionError(f"mode must be 'actor' or 'task', got {mode!r}.")
        if cls.mode is not None:
            if mode != cls.mode:
                other = "TaskWrapper" if mode == "task" else "ActorWrapper"
                raise WrongModeError(
                    f"{cls.__name__} is for {cls.mode} mode; for {mode} mode use {other} or "
                    f"ModelWrapper.from_model(..., mode={mode!r})."
                )
            return cls
        return next(k for k in cls._family().__subclasses__() if k.mode == mode)

    # --- what every wrapper offers ------------------------------------------------------

    def serialize(self) -> dict[str, Any]:
        """This wrapper as a dict of picklable values (the pickled pipeline and the models' references).

        :meth:`deserialize` turns it back into a wrapper, in this process or another.
        """
        return {
            "pipeline": self._shared.pickled_pipeline(),
            "model_refs": dict(self._shared.refs),
            "mode": self.mode,
            "method_names": list(self._shared.method_names),
            "options": self._options.as_dict(),
            "task_options": dict(self._task_options()),
            "nbytes": dict(self._shared.nbytes),
            "copies": self._shared.copies,
        }

    def _task_options(self) -> dict[str, Any]:
        return {}

    def load(self, *args: Any, **kwargs: Any) -> Any:
        """The ready pipeline (or model): rebuilt here (actor mode), or with task-running shims (task mode).

        See :meth:`ActorWrapper.load` and :meth:`TaskWrapper.load`.
        """
        raise NotImplementedError(f"{type(self).__name__} is not a wrapper of a mode")

    @property
    def model_refs(self) -> dict[str, Any]:
        """Attribute name to the ObjectRef of that stored model (``""`` for a bare model)."""
        return dict(self._shared.refs)

    @property
    def model_names(self) -> list[str]:
        """The shared pipeline attributes (empty for a bare model)."""
        return [] if self._shared.is_bare_model else list(self._shared.refs)

    @property
    def nbytes(self) -> int:
        """Weight bytes in the object store for this wrapper, all models together."""
        return sum(self._shared.nbytes.values())

    def replicate(self, nodes: str | Iterable[str] = "all", *, progress: Progress | None = None) -> list[str]:
        """Place a copy of the models on ``nodes`` now, and wait for every one; return the nodes that hold one.

        Without this, a node gets its copy when a worker there first loads the models.
        Each copy is owned by a holder on its node and ends with this wrapper (its
        :meth:`release`, or the process that wrapped). Nodes pull the chunks from nodes
        that hold or receive them, so many nodes fill in about the time one transfer
        takes. On a single-node cluster there is nothing to copy.

        Example::

            wrapper = ActorWrapper(model)
            wrapper.replicate("all", progress=lambda node, done, total: print(f"{done}/{total} nodes ready"))

        Args:
            nodes: ``"all"`` (every alive node) or node ids (``ray.nodes()``'s ``NodeID``).
            progress: called as each node's copy completes: ``progress(node_id, done, total)``.
        """
        return self._shared.replicate(target_nodes(nodes), progress)

    def release(self) -> None:
        """Drop the wrapper's references to the stored models (and, in the process that wrapped, every node's copy).

        Ray frees the objects once no worker still uses them; this wrapper can no
        longer load afterwards (:class:`~ray_zerocopy_core.errors.WrapperReleasedError`).
        """
        self._shared.release()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, models={self.model_names}, nbytes={self.nbytes})"


class ActorWrapper(ModelWrapper):
    """Actor mode: pass the wrapper to actors and call :meth:`load` in their ``__init__``.

    ``ActorWrapper(model_or_pipeline, model_attr_names=None, **options)``; the options
    are keyword-only (see :class:`ModelWrapper`).
    """

    mode: ClassVar[Mode | None] = "actor"

    def __init__(
        self,
        pipeline: Any,
        model_attr_names: str | Iterable[str] | None = None,
        **options: Unpack[LoadOverrides],
    ) -> None:
        self._set_parts(SharedPipeline.share(pipeline, model_attr_names), LoadOptions().merged(**options), None)

    @property
    def constructor_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for an actor constructor (e.g. Ray Data ``fn_constructor_kwargs``).

        They match :func:`ray_zerocopy.load_pipeline_in_actor`'s parameters: always
        ``pipeline_skeleton`` (the pipeline object with its models set to ``None``),
        ``model_refs``, ``device`` and ``use_fast_load`` (the four that constructor
        protocol takes), plus ``writable`` and ``prefault`` when the wrapper sets them,
        so that a constructor which cannot take them fails loudly instead of silently
        loading shared, read-only weights. Most code passes the wrapper itself instead
        and calls :meth:`load`.
        """
        self._shared.check_available()
        kwargs = {
            "pipeline_skeleton": self._shared.pipeline_object(),
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
        *,
        writable: bool | None = None,
        prefault: bool | None = None,
        **deprecated: Any,
    ) -> Any:
        """Rebuild every model in this process and return the ready pipeline (or model).

        On the CPU the weights alias the object store and are read-only
        (``writable=True`` gives a private copy). Arguments left as None keep the
        wrapper's settings. ``_use_fast_load`` (0.x's spelling) is accepted with a
        :class:`DeprecationWarning`.
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
        return self._shared.load(options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Refused: an actor-mode wrapper is loaded in the actor, not called."""
        raise WrongModeError(
            f"This {type(self).__name__} is in actor mode and cannot be called. Call "
            ".load() inside the actor and use what it returns, or wrap with mode='task'."
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise UnknownMethodError(
            f"{type(self).__name__} has no attribute {name!r}. In actor mode, call .load() in "
            "the worker and use the pipeline it returns."
        )


class TaskWrapper(ModelWrapper):
    """Task mode: each model call runs as a Ray task on shared, cached weights.

    ``TaskWrapper(pipeline)(x)`` runs the pipeline's own ``__call__`` here, with each
    model call sent to a task. Other pipeline attributes and methods are reachable
    through the wrapper, too. ``method_names`` may come second, as in ray-zerocopy 0.x;
    the other options are keyword-only (see :class:`ModelWrapper`).
    """

    mode: ClassVar[Mode | None] = "task"

    def __init__(
        self,
        pipeline: Any,
        method_names: Sequence[str] | None = None,
        *,
        model_attr_names: str | Iterable[str] | None = None,
        task_options: dict[str, Any] | None = None,
        **options: Unpack[LoadOverrides],
    ) -> None:
        if isinstance(method_names, str):
            method_names = (method_names,)
        requested = tuple(method_names) if method_names else self.default_method_names
        shared = SharedPipeline.share(pipeline, model_attr_names, requested)
        self._set_parts(shared, LoadOptions().merged(**options), task_options)

    def _set_parts(self, shared: SharedPipeline, options: LoadOptions, task_options: dict[str, Any] | None) -> None:
        super()._set_parts(shared, options, task_options)
        self._ray_task_options = dict(task_options or {})
        self._pipeline: Any = None  # what load() gave with the wrapper's own options, kept for calls

    def _task_options(self) -> dict[str, Any]:
        return self._ray_task_options

    @property
    def method_names(self) -> tuple[str, ...]:
        """The model methods callable remotely."""
        return self._shared.method_names

    def load(self, **options: Unpack[LoadOverrides]) -> Any:
        """The pipeline (or model) with each model replaced by a shim whose calls run as Ray tasks.

        Options left out keep the wrapper's; the shims load the model with these options
        in the workers.
        """
        merged = self._options.merged(**options)
        if merged != self._options:
            return rewrite_for_tasks(self._shared, self.method_names, merged, self._ray_task_options)
        if self._pipeline is None:
            self._pipeline = rewrite_for_tasks(self._shared, self.method_names, merged, self._ray_task_options)
        return self._pipeline

    def release(self) -> None:
        """Drop the references to the stored models (see :meth:`ModelWrapper.release`)."""
        super().release()
        self._pipeline = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the pipeline (or model); its model calls run as Ray tasks."""
        return self.load()(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.load(), name)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pipeline": None}
