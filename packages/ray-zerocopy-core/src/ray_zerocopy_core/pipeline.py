"""Pipelines: objects whose attributes are models, shared one stored model per attribute.

A bare model is handled like a pipeline of one. :class:`SharedPipeline` holds what
workers need: the pipeline pickled with a stand-in for each of its models, and one
ObjectRef per model. Every reference to a shared model gets the
stand-in, whether an attribute, a closure variable or a global that the pipeline's
methods use, so it is small to pickle: weights never travel with it.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import CodeType, FunctionType
from typing import Any

import ray
import torch
from ray import cloudpickle

from ray_zerocopy_core.cluster import NodeCopies, Progress, this_node
from ray_zerocopy_core.errors import BackendError, BackendNotInstalledError, PipelineError, WrapperReleasedError
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pickling import dumps_with_placeholders, loads_with_placeholders, split_tensors
from ray_zerocopy_core.plugin import Backend, ModelSource, open_payload
from ray_zerocopy_core.registry import backend_for, find_backend
from ray_zerocopy_core.sharing import located, rebuild_model, share_model
from ray_zerocopy_core.store import check_capacity, stored_parts

#: Key under which a bare model (not a pipeline) is stored in ``SharedPipeline.refs``.
BARE_MODEL = ""


def _attributes(pipeline: Any) -> dict[str, Any]:
    attributes = getattr(pipeline, "__dict__", None)
    if attributes is None:
        raise PipelineError(
            f"Expected an nn.Module or a pipeline object with models as attributes, got "
            f"{type(pipeline).__qualname__}, which has no attributes to search. Pass the model "
            "itself, or an object that holds the models as attributes (lists and dicts of "
            "models are not searched)."
        )
    return dict(attributes)


def find_models(pipeline: Any) -> dict[str, tuple[Any, Backend]]:
    """``pipeline``'s attributes that some backend can share: name to (model, backend), in order."""
    found = {}
    for name, value in _attributes(pipeline).items():
        backend = find_backend(value)
        if backend is not None:
            found[name] = (value, backend)
    return found


def named_models(pipeline: Any, model_attr_names: str | Iterable[str]) -> dict[str, tuple[Any, Backend]]:
    """The models ``model_attr_names`` names (one name, or several), each with its backend."""
    names = [model_attr_names] if isinstance(model_attr_names, str) else list(model_attr_names)
    kind = type(pipeline).__qualname__
    models = {}
    for name in names:
        if not hasattr(pipeline, name):
            found = list(find_models(pipeline)) if hasattr(pipeline, "__dict__") else []
            raise PipelineError(
                f"{kind} has no attribute {name!r} (from model_attr_names). "
                f"Name attributes that hold models; found: {', '.join(map(repr, found)) or 'none'}."
            )
        value = getattr(pipeline, name)
        try:
            models[name] = (value, backend_for(value))
        except BackendNotInstalledError:
            raise
        except BackendError as exc:
            raise PipelineError(
                f"Attribute {name!r} of {kind} cannot be shared: {exc} "
                "model_attr_names must name attributes that hold models (nn.Module, ScriptModule, ExportedProgram...)."
            ) from exc
    return models


def pipeline_models(obj: Any, model_attr_names: str | Iterable[str] | None) -> dict[str, tuple[Any, Backend]]:
    """The models to share in ``obj``, each with its backend: ``obj`` itself (key ``""``) if it is a model.

    Raises:
        PipelineError: ``obj`` holds no model, or ``model_attr_names`` names a missing one.
    """
    backend = find_backend(obj) if model_attr_names is None else None
    if backend is not None:
        return {BARE_MODEL: (obj, backend)}
    models = find_models(obj) if model_attr_names is None else named_models(obj, model_attr_names)
    if not models:
        raise PipelineError(
            f"No model found in {type(obj).__qualname__}: none of its attributes is a model "
            "a backend can share (nn.Module, ScriptModule, ExportedProgram...). Give the models "
            "as attributes, or name them with model_attr_names=[...]."
        )
    return models


def without_models(pipeline: Any, models: Mapping[str, Any]) -> Any:
    """A shallow copy of ``pipeline`` with each of its ``models`` attributes set to ``None``."""
    local = copy.copy(pipeline)
    for name in models:
        setattr(local, name, None)
    return local


def stream_stored(obj: Any, model_attr_names: Iterable[str] | None = None) -> Iterator[Any]:
    """``obj`` (a model, a pipeline or a source) stored as a stream, for a node holder's build task.

    Yields a dict first (``models``: attribute to its head, without chunks, and its chunk
    ``count``; ``extra``: the pickled pipeline, the bytes and the backend of each model),
    then every chunk of every model in that order. Each model's payload is open (a
    checkpoint's files mapped) until its chunks are streamed.
    """
    models = pipeline_models(obj, model_attr_names)
    plain = {name: model for name, (model, _) in models.items()}
    pickled = None if set(models) == {BARE_MODEL} else pickle_pipeline(without_models(obj, models), plain)
    with contextlib.ExitStack() as stack:
        heads, streams, nbytes = {}, [], {}
        for name, (model, backend) in models.items():
            payload = located(stack.enter_context(open_payload(backend, model)), backend)
            check_capacity(payload, f"model {name!r}" if name else "model")
            head, count, chunks = stored_parts(payload)
            heads[name] = {**{k: v for k, v in head.items() if k != "chunks"}, "count": count}
            streams.append(chunks)
            nbytes[name] = payload.table.nbytes
        backends = {name: backend.name for name, (_, backend) in models.items()}
        yield {"models": heads, "extra": {"pipeline": pickled, "nbytes": nbytes, "backends": backends}}
        for chunks in streams:
            yield from chunks


#: Tensor bytes a pickled pipeline may carry by value (small constants are fine); more
#: means a model travels to every worker as a private copy, which is refused.
CARRIED_TENSOR_LIMIT = 64 * 1024


def load_pipeline_bytes(data: bytes, models: Mapping[str, Any]) -> Any:
    """Unpickle a pipeline from :func:`pickle_pipeline`, each stand-in becoming ``models[name]`` (or None)."""
    return loads_with_placeholders(data, models.get)


def _holds_tensors(value: Any) -> bool:
    """Whether pickling ``value`` would carry tensor data (or cannot be done at all)."""
    if isinstance(value, (torch.Tensor, torch.nn.Module)):
        return True
    try:
        return bool(split_tensors(value)[1])
    except Exception:
        return True


def _by_value_functions(cls: type) -> Iterator[tuple[str, FunctionType]]:
    """``(qualname, function)`` of the methods cloudpickle sends by value (classes of ``__main__`` or local)."""
    for klass in cls.__mro__:
        if klass.__module__ != "__main__" and "<locals>" not in klass.__qualname__:
            continue
        for member in vars(klass).values():
            for function in (member, getattr(member, "__func__", None), getattr(member, "fget", None)):
                if isinstance(function, FunctionType):
                    yield function.__qualname__, function


def _code_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            names |= _code_names(constant)
    return names


def pipeline_culprits(pipeline: Any, suspect: Callable[[Any], bool]) -> list[str]:
    """Where ``pipeline`` reaches values that ``suspect`` flags: attributes, captured globals and closures."""
    found = [f"attribute {name!r}" for name, value in vars(pipeline).items() if suspect(value)]
    for qualname, function in _by_value_functions(type(pipeline)):
        for name in sorted(_code_names(function.__code__) & set(function.__globals__)):
            if suspect(function.__globals__[name]):
                found.append(f"global {name!r} (used by {qualname})")
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            if name != "__class__" and suspect(cell.cell_contents):
                found.append(f"closure variable {name!r} (used by {qualname})")
    return list(dict.fromkeys(found))


def pickle_pipeline(pipeline: Any, models: Mapping[str, Any]) -> bytes:
    """Pickle ``pipeline`` with a stand-in for each of ``models`` (name to model), wherever it is reached.

    A class defined in a script's ``__main__`` or inside a function is pickled by value,
    with the globals and closure variables its methods use: a shared model reached that
    way becomes the same stand-in as the attribute, and :func:`load_pipeline_bytes` puts the
    worker's model there. Each unpickling makes such classes anew, so the caller's own
    class is never rebound. Anything else the pipeline reaches travels by value.

    Raises:
        PipelineError: the pipeline cannot be pickled, or would carry more than
            :data:`CARRIED_TENSOR_LIMIT` bytes of tensors to every worker (a model captured
            by a global or closure that is not one of the shared models, say); the error
            names the culprit.
    """
    standins = {id(model): name for name, model in models.items()}
    carried: dict[int, torch.Tensor] = {}

    def standin(value: Any) -> str | None:
        name = standins.get(id(value))
        if name is None and isinstance(value, torch.Tensor):
            carried.setdefault(id(value), value)
        return name

    kind = type(pipeline).__qualname__
    try:
        data = dumps_with_placeholders(pipeline, standin, fresh_classes=True)
    except Exception as exc:
        culprits = pipeline_culprits(pipeline, lambda value: id(value) not in standins and not _picklable(value))
        where = f" ({', '.join(culprits)})" if culprits else ""
        raise PipelineError(
            f"The pipeline {kind} cannot be pickled{where}: {exc}. Workers receive the pipeline "
            "with a stand-in for each shared model, so everything else it holds or its methods use must "
            "be picklable: give models to the pipeline as attributes (self.model = model), and create "
            "other unpicklable resources lazily inside the worker."
        ) from exc
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in carried.values()}
    total = sum(size for _, size in storages)
    if total > CARRIED_TENSOR_LIMIT:
        culprits = pipeline_culprits(pipeline, lambda value: id(value) not in standins and _holds_tensors(value))
        where = ", ".join(culprits) or "somewhere in its state"
        raise PipelineError(
            f"The pipeline {kind} would carry {total / 1024**2:.1f} MiB of tensors to every worker "
            f"by value, outside the shared models: {where}. Only the pipeline's shared models are "
            "replaced when it is pickled; a model reached otherwise travels with it, and every worker "
            "gets a private copy. Give the model to the pipeline as an attribute (self.model = model), "
            "or name it in model_attr_names, so it is shared zero-copy."
        )
    return data


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


#: Method names already warned about (warned once per process, per method and model kinds).
_warned_methods: set[str] = set()


def usable_methods(models: Mapping[str, Any], method_names: Iterable[str]) -> tuple[str, ...]:
    """``method_names`` that some model has, plus ``__call__``; warn once about the others.

    A name no model has (a pipeline's own method, say) is ignored, as ray-zerocopy 0.x
    did, with a :class:`UserWarning` naming the method and the models. With a
    :class:`~ray_zerocopy_core.plugin.ModelSource` (a checkpoint) among the models every
    name is kept: its model exists only while it is read, so its methods cannot be checked.
    """
    kept: list[str] = []
    unknown = any(isinstance(model, ModelSource) for model in models.values())
    for method in method_names:
        if method == "__call__" or unknown or any(callable(getattr(model, method, None)) for model in models.values()):
            kept.append(method)
            continue
        kinds = ", ".join(sorted({type(model).__qualname__ for model in models.values()}))
        message = (
            f"method_names includes {method!r}, but no model ({kinds}) has such a method; it is ignored. "
            "Name methods the models define, e.g. method_names=['__call__', 'encode']."
        )
        if message not in _warned_methods:
            _warned_methods.add(message)
            warnings.warn(message, UserWarning, stacklevel=4)
    if "__call__" not in kept:
        kept.insert(0, "__call__")
    return tuple(dict.fromkeys(kept))


def _reference(model: Any) -> Callable[[], Any]:
    """A weak reference to ``model`` where it allows one (a strong one otherwise)."""
    try:
        return weakref.ref(model)
    except TypeError:
        return lambda: model


@dataclass
class SharedPipeline:
    """A pipeline or bare model whose models live in the object store.

    Attributes:
        pipeline: the pipeline pickled with a stand-in for each shared model
            (:func:`pickle_pipeline`), what workers unpickle; ``None`` for a bare model, and
            in task mode until the wrapper is first pickled.
        refs: attribute name to the ObjectRef of that model (``""`` for a bare model).
        nbytes: weight bytes per attribute.
        local: the pipeline in the caller, its models set to ``None`` (not pickled): the
            caller assembles it without unpickling anything, so its own class, closures and
            globals are left as they are.
        method_names: task mode: the model methods callable remotely.
        copies: on a cluster of several nodes, where each node gets its own copy of the
            models (None on one node: loads use the stored models as they are).
    """

    pipeline: bytes | None
    refs: dict[str, ray.ObjectRef]
    nbytes: dict[str, int] = field(default_factory=dict)
    local: Any = field(default=None, repr=False, compare=False)
    method_names: tuple[str, ...] = ()
    _models: dict[str, Callable[[], Any]] = field(default_factory=dict, repr=False, compare=False)
    copies: NodeCopies | None = None
    _release_copies: weakref.finalize[..., Any] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def share(
        cls,
        obj: Any,
        model_attr_names: str | Iterable[str] | None = None,
        method_names: Iterable[str] | None = None,
        copies: bool = True,
    ) -> SharedPipeline:
        """Put each model of ``obj`` (or ``obj`` itself, if it is a model) in the object store.

        With ``method_names`` (task mode) the pipeline stays in the caller and is pickled
        only if the wrapper is; otherwise it is pickled here, with a stand-in for each
        model, so that a pipeline that cannot travel is refused before anything is stored.
        ``copies``: on a cluster of several nodes, let each node that loads the models get
        its own copy (:class:`~ray_zerocopy_core.cluster.NodeCopies`).
        """
        models = pipeline_models(obj, model_attr_names)
        plain = {name: model for name, (model, _) in models.items()}
        methods = usable_methods(plain, method_names) if method_names is not None else ()
        pickled = local = None
        if set(models) != {BARE_MODEL}:
            local = without_models(obj, models)
            if method_names is None:
                pickled = pickle_pipeline(local, plain)
        refs: dict[str, ray.ObjectRef] = {}
        sizes: dict[str, int] = {}
        for name, (model, backend_of_model) in models.items():
            what = f"model {name!r}" if name else "model"
            refs[name], sizes[name] = share_model(model, backend_of_model, what=what)
        captured = {name: _reference(model) for name, model in plain.items()} if local is not None else {}
        node_copies = NodeCopies.start(refs) if copies else None
        shared = cls(pickled, refs, sizes, local, methods, captured, node_copies)
        if node_copies is not None:  # this process stored the models: the other nodes' copies go with them
            shared._release_copies = weakref.finalize(shared, node_copies.release)
        return shared

    @classmethod
    def from_parts(
        cls,
        pipeline: Any,
        refs: Mapping[str, Any],
        nbytes: Mapping[str, int] | None = None,
        method_names: Iterable[str] = (),
        copies: NodeCopies | None = None,
    ) -> SharedPipeline:
        """The record of models stored already: ``pipeline`` is what :attr:`pipeline` holds, or a
        pipeline object with its models set to ``None`` (as the legacy functions hand it out),
        pickled here.
        """
        if pipeline is not None and not isinstance(pipeline, bytes):
            pipeline = pickle_pipeline(pipeline, {})
        return cls(pipeline, dict(refs), dict(nbytes or {}), method_names=tuple(method_names), copies=copies)

    @property
    def is_bare_model(self) -> bool:
        """Whether this holds one model rather than a pipeline."""
        return set(self.refs) == {BARE_MODEL}

    @property
    def released(self) -> bool:
        """Whether :meth:`release` was called."""
        return not self.refs

    def check_available(self) -> None:
        """Raise :class:`WrapperReleasedError` if the stored models were released."""
        if self.released:
            raise WrapperReleasedError(
                "This wrapper's models were released (release() was called); wrap the model again."
            )

    def pickled_pipeline(self) -> bytes | None:
        """:attr:`pipeline`, pickling the caller's pipeline first if that was not done yet (task mode)."""
        if self.pipeline is None and self.local is not None:
            live = {name: model() for name, model in self._models.items()}
            self.pipeline = pickle_pipeline(self.local, {name: m for name, m in live.items() if m is not None})
        return self.pipeline

    def pipeline_object(self) -> Any:
        """The pipeline with its model attributes set to ``None``, as an object (``None`` for a bare model).

        The shape the legacy functions and ``constructor_kwargs`` hand out: a plain object,
        pickled as any other, so a model it captures travels with it (the wrappers send
        :attr:`pipeline` instead).
        """
        if self.local is not None or self.pipeline is None:
            return self.local
        return load_pipeline_bytes(self.pipeline, {})

    def assemble(self, models: dict[str, Any]) -> Any:
        """The pipeline with ``models`` in place (or the bare model itself).

        In the caller a shallow copy of its pipeline; elsewhere the pickled pipeline
        unpickled, each stand-in becoming the model of that name.
        """
        if self.is_bare_model:
            return models[BARE_MODEL]
        if self.local is not None:
            pipeline = copy.copy(self.local)
        else:
            assert self.pipeline is not None
            pipeline = load_pipeline_bytes(self.pipeline, models)
        for name, model in models.items():
            setattr(pipeline, name, model)
        return pipeline

    def local_ref(self, name: str) -> ray.ObjectRef:
        """The stored model of attribute ``name`` on this node (its own copy on a node other than the origin's)."""
        ref = self.refs[name]
        return self.copies.head(name, ref) if self.copies is not None else ref

    def load(self, options: LoadOptions) -> Any:
        """Actor mode: rebuild every model in this process and return the assembled pipeline.

        On the CPU each model's tensors alias this node's copy in the object store, so N
        actors on a node share one copy.

        Raises:
            WrapperReleasedError: the wrapper's models were released.
            WeightsUnavailableError: the stored weights are gone.
        """
        self.check_available()
        return self.assemble({name: rebuild_model(self.local_ref(name), options) for name in self.refs})

    def replicate(self, nodes: list[str], progress: Progress | None = None) -> list[str]:
        """Place a copy of every model on ``nodes`` now and wait for them (one node: nothing to do)."""
        self.check_available()
        if self.copies is None:
            return [this_node()]
        return self.copies.replicate(self.refs, nodes, progress)

    def release(self) -> None:
        """Drop this handle's references (and every node's copy); Ray frees the objects once no worker uses them."""
        if self._release_copies is not None:  # only the process that stored the models holds this
            finalizer = self._release_copies.detach()
            if finalizer is not None:
                _, release_copies, _, _ = finalizer
                release_copies(wait=True)  # the copies are gone from every node when this returns
        self.refs = {}
        self.nbytes = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(pipeline=self.pickled_pipeline(), local=None, _models={}, _release_copies=None)
        return state
