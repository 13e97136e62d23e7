"""The function API of earlier versions, kept working; every call warns once and names its replacement.

Two generations of functions are kept: this project's first functions (``ray_zerocopy``,
``ray_zerocopy.invoke``, ``ray_zerocopy.actor`` and their ``ray_zerocopy.jit``
counterparts) and ray-zerocopy 0.x's module functions (``ray_zerocopy.nn`` and
``ray_zerocopy.jit``: ``prepare_pipeline``, ``load_pipeline_for_actors``, ``call_model``,
``extract_tensors``...). Each is written once, as a method of :class:`Family`, over the
public wrappers (``serialize``/``deserialize`` carry a wrapper's parts) and the plugin
SDK; each module function is such a method bound to :data:`EAGER` or :data:`JIT`. A family
is only the pair of wrapper classes it stands for (``TaskWrapper``/``ActorWrapper`` or
``JITTaskWrapper``/``JITActorWrapper``): they give the defaults and the replacement each
warning names. Which backend shares each model is decided by the registry either way.

New code should use the wrappers; :doc:`/migration` shows each replacement.
"""

from __future__ import annotations

import functools
import pickle
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray
import torch

from ray_zerocopy._jit_import import jit_wrapper
from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.pipeline import load_pipeline_bytes
from ray_zerocopy_core.plugin import LoadOptions, ModelPayload, TensorEntry, TensorTable, materialize
from ray_zerocopy_core.registry import backend_for, get_backend
from ray_zerocopy_core.wrappers import ActorWrapper, TaskWrapper

Device = str | torch.device | None
#: 0.x's ``model_info``: attribute name to (ObjectRef, methods callable remotely or None).
ModelInfo = dict[str, tuple[Any, set[str] | None]]
#: The key of a bare model's reference (a model that is not a pipeline).
BARE_MODEL = ""


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

    def _warn(self, function: str, replacement: str, module: str | None = None) -> None:
        """Emit the one DeprecationWarning of ``function``, pointing at the line that called it.

        ``module`` is where 0.x users imported it from (``ray_zerocopy.nn`` for the eager
        0.x functions); the first eager functions are named without a module.
        """
        module = self.module if self.jit else module
        old = f"{module}.{function}()" if module else f"{function}()"
        warnings.warn(f"{old} is deprecated; use {replacement} instead.", DeprecationWarning, stacklevel=3)

    def _check_script_module(self, function: str, model: Any) -> None:
        if self.jit and not isinstance(model, torch.jit.ScriptModule):
            raise UnsupportedModelError(
                f"Expected torch.jit.ScriptModule, got {type(model).__qualname__}: {function}() takes a "
                "torch.jit.ScriptModule. Use ActorWrapper(model) for eager models."
            )

    def _load(self, skeleton: Any, model_refs: Mapping[str, Any], **options: Any) -> Any:
        """Rebuild stored models in this process, through the actor wrapper (the one way to load)."""
        wrapper = self._wrapper_class(self.actor_wrapper).deserialize(
            pipeline=skeleton, model_refs=dict(model_refs), options=options
        )
        return wrapper.load()

    def _store(self, pipeline: Any, model_attr_names: Iterable[str] | None) -> tuple[Any, dict[str, Any]]:
        """Share ``pipeline``'s models with the actor wrapper; return its skeleton and model references.

        The skeleton is the pipeline object with its models set to ``None``, as earlier
        versions returned it (``constructor_kwargs`` gives it).
        """
        kwargs = self._wrapper_class(self.actor_wrapper)(pipeline, model_attr_names).constructor_kwargs
        return kwargs["pipeline_skeleton"], kwargs["model_refs"]

    # --- this project's first functions ---------------------------------------------------

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
        self._check_script_module(function, model)
        skeleton, refs = self._store(model, None)
        if skeleton is not None:
            raise UnsupportedModelError(
                f"{function}() takes one model, got a pipeline ({type(model).__qualname__}); "
                f"use {self.actor_wrapper}(pipeline)."
            )
        return refs[BARE_MODEL]

    def load_model_in_actor(self, model_ref: Any, device: Device = None, use_fast_load: bool = False) -> Any:
        """Deprecated: use ``ActorWrapper.load()`` (``JITActorWrapper`` for TorchScript).

        Rebuild a model stored by :func:`prepare_model_for_actors`. ``model_ref`` may be
        the ObjectRef or the value Ray already resolved from it (as when the ref is
        passed top-level to an actor constructor).
        """
        self._warn(self._model_function("load"), f"{self.actor_wrapper}(model).load()")
        return self._load(None, {BARE_MODEL: model_ref}, device=device, use_fast_load=use_fast_load)

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
        return self._store(pipeline, model_attr_names)

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
        return self._load(
            pipeline_skeleton,
            model_refs,
            device=device,
            use_fast_load=use_fast_load,
            writable=writable,
            prefault=prefault,
        )

    # --- ray-zerocopy 0.x's module functions (ray_zerocopy.nn, ray_zerocopy.jit) ----------

    def prepare_pipeline(
        self,
        pipeline: Any,
        model_attr_names: Iterable[str] | None = None,
        method_names: Sequence[str] | None = None,
        filter_private: bool = False,
    ) -> tuple[Any, ModelInfo]:
        """Deprecated (0.x): use ``ActorWrapper(pipeline)``, or ``TaskWrapper(pipeline, method_names=...)``.

        Store each model; return ``(skeleton, model_info)``, ``model_info`` mapping each
        attribute to ``(ObjectRef, methods)``: the methods callable remotely with
        ``method_names`` (task mode), ``None`` without (actor mode). ``filter_private`` is
        accepted and has no effect: models are found among the pipeline's own attributes.
        """
        self._warn(
            "prepare_pipeline", f"{self.actor_wrapper}(pipeline) or {self.task_wrapper}(pipeline)", "ray_zerocopy.nn"
        )
        return self._prepare(pipeline, model_attr_names, method_names)

    def _prepare(
        self, pipeline: Any, model_attr_names: Iterable[str] | None, method_names: Sequence[str] | None
    ) -> tuple[Any, ModelInfo]:
        if method_names is None:
            skeleton, refs = self._store(pipeline, model_attr_names)
            return skeleton, {name: (ref, None) for name, ref in refs.items()}
        wrapper = self._wrapper_class(self.task_wrapper)(pipeline, method_names, model_attr_names=model_attr_names)
        parts, methods = wrapper.serialize(), set(wrapper.method_names)
        skeleton = None if parts["pipeline"] is None else load_pipeline_bytes(parts["pipeline"], {})
        return skeleton, {name: (ref, set(methods)) for name, ref in parts["model_refs"].items()}

    def prepare_pipeline_for_actors(
        self, pipeline: Any, model_attr_names: Iterable[str] | None = None
    ) -> tuple[Any, dict[str, ray.ObjectRef]]:
        """Deprecated (0.x): use ``ActorWrapper(pipeline)`` (``JITActorWrapper`` for TorchScript).

        Store each model of ``pipeline``; return ``(skeleton, model_refs)`` for
        :func:`load_pipeline_for_actors`.
        """
        self._warn("prepare_pipeline_for_actors", f"{self.actor_wrapper}(pipeline)", "ray_zerocopy.nn")
        return self._store(pipeline, model_attr_names)

    def load_pipeline_for_actors(
        self,
        pipeline_skeleton: Any,
        model_refs: Mapping[str, Any],
        device: Device = None,
        use_fast_load: bool = False,
    ) -> Any:
        """Deprecated (0.x): use ``ActorWrapper.load()`` (``JITActorWrapper`` for TorchScript).

        Rebuild, in this process, what :func:`prepare_pipeline_for_actors` stored.
        """
        self._warn("load_pipeline_for_actors", f"{self.actor_wrapper}(pipeline).load()", "ray_zerocopy.nn")
        return self._load(pipeline_skeleton, model_refs, device=device, use_fast_load=use_fast_load)

    def prepare_pipeline_for_tasks(
        self, pipeline: Any, method_names: Sequence[str] | None = None, filter_private: bool = False
    ) -> tuple[Any, ModelInfo]:
        """Deprecated (0.x): use ``TaskWrapper(pipeline, method_names=...)`` (``JITTaskWrapper``).

        Store each model; return ``(skeleton, model_info)`` for :func:`load_pipeline_for_tasks`.
        ``method_names`` defaults to the task wrapper's; ``filter_private`` is accepted and
        has no effect, as for :func:`prepare_pipeline`.
        """
        self._warn("prepare_pipeline_for_tasks", f"{self.task_wrapper}(pipeline)", "ray_zerocopy.nn")
        task_class = self._wrapper_class(self.task_wrapper)
        return self._prepare(pipeline, None, method_names or task_class.default_method_names)

    def load_pipeline_for_tasks(self, pipeline_skeleton: Any, model_info: Mapping[str, tuple[Any, Any]]) -> Any:
        """Deprecated (0.x): use ``TaskWrapper(pipeline).load()`` (``JITTaskWrapper`` for TorchScript).

        The pipeline with each model replaced by a shim whose calls run as Ray tasks.
        """
        self._warn("load_pipeline_for_tasks", f"{self.task_wrapper}(pipeline).load()", "ray_zerocopy.nn")
        methods: dict[str, None] = {}
        for _, names in model_info.values():
            methods.update(dict.fromkeys(sorted(names or ("__call__",))))
        wrapper = self._wrapper_class(self.task_wrapper).deserialize(
            pipeline=pipeline_skeleton,
            model_refs={name: ref for name, (ref, _) in model_info.items()},
            mode="task",
            method_names=list(methods),
        )
        return wrapper.load()

    def model_info_to_model_refs(self, model_info: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
        """Deprecated (0.x): use ``wrapper.model_refs``. Attribute name to ObjectRef, from ``model_info``."""
        self._warn("model_info_to_model_refs", "wrapper.model_refs", "ray_zerocopy.nn")
        return {name: ref for name, (ref, _) in model_info.items()}

    def extract_tensors(self, model: Any) -> tuple[bytes, OrderedDict[str, np.ndarray]]:
        """Deprecated (0.x): use ``ActorWrapper(model)`` (``JITActorWrapper`` for TorchScript).

        Split ``model`` as 0.x did: returns ``(model_bytes, tensors)``, the model without
        its weights, and an ``OrderedDict`` from each ``state_dict`` name (buffers
        included) to a numpy array shaped like that tensor: a view of the model's own
        memory, not a copy. Tied weights appear under each of their names, viewing the
        same memory. For :func:`replace_tensors`; a dtype numpy lacks (``bfloat16``, the
        ``float8`` types...) comes as its raw bits (see :func:`numpy_dtype`).

        Raises:
            UnsupportedModelError: (TorchScript) ``model`` is not a ``torch.jit.ScriptModule``
                (a ``TypeError``, as in 0.x).
        """
        self._warn("extract_tensors", f"{self.actor_wrapper}(model)")
        return self._extract("extract_tensors", model)

    def extract_tensors_minimal(self, model: Any) -> tuple[bytes, OrderedDict[str, np.ndarray]]:
        """Deprecated (0.x): use ``JITActorWrapper(model)``. The same as :func:`extract_tensors`.

        Skeletons never hold weights here, so there is no smaller one to make.
        """
        self._warn("extract_tensors_minimal", f"{self.actor_wrapper}(model)")
        return self._extract("extract_tensors_minimal", model)

    def _extract(self, function: str, model: Any) -> tuple[bytes, OrderedDict[str, np.ndarray]]:
        self._check_script_module(function, model)
        backend = backend_for(model)
        payload = backend.extract(model)
        # Which table entry each state_dict name holds: rebuild here (weights alias the
        # table's buffers, nothing is copied) and match the rebuilt tensors' addresses.
        entry_tensors = materialize(payload.table, LoadOptions(), parameters=())
        position = {_address(t): i for i, t in enumerate(entry_tensors)}
        rebuilt = backend.rebuild(payload, LoadOptions())
        sources: list[str | None] = [None] * len(entry_tensors)
        for name, tensor in _state_dict(rebuilt).items():
            index = position.get(_address(tensor))
            if index is not None and sources[index] is None:
                sources[index] = name
        # Tensors outside the state_dict (TorchScript tensor attributes) have no name in
        # the dict: their bytes go into model_bytes, a copy.
        inline = {i: _numpy_view(t).copy() for i, t in enumerate(entry_tensors) if sources[i] is None}
        extracted = _ExtractedModel(payload.backend, payload.skeleton, payload.table.entries, sources, inline)
        arrays = _arrays(_state_dict(model))
        return pickle.dumps(extracted, protocol=pickle.HIGHEST_PROTOCOL), arrays

    def replace_tensors(self, model_bytes: bytes, tensors: Mapping[str, np.ndarray]) -> Any:
        """Deprecated (0.x): use ``ActorWrapper(model).load()`` (``JITActorWrapper`` for TorchScript).

        Rebuild a model from :func:`extract_tensors`' two values; its weights alias the
        arrays of ``tensors`` (no copy), which may be the ones ``extract_tensors``
        returned, the same after a trip through Ray, or others of the same names,
        shapes and dtypes.

        Raises:
            UnsupportedModelError: ``tensors`` lacks a name ``model_bytes`` needs, or an
                array's shape or dtype is not its tensor's.
        """
        self._warn("replace_tensors", f"{self.actor_wrapper}(model).load()")
        return _rebuild_extracted(model_bytes, tensors)


@dataclass(frozen=True)
class _ExtractedModel:
    """What ``extract_tensors``' ``model_bytes`` hold: a model without its weights.

    Attributes:
        backend: the name of the backend that split the model.
        skeleton: that backend's weightless skeleton.
        entries: the backend's table index (one entry per distinct tensor).
        sources: per entry, the ``state_dict`` name whose array holds its elements;
            ``None`` for a tensor outside the ``state_dict``, kept in ``inline``.
        inline: per entry outside the ``state_dict``, its elements (a copy).
    """

    backend: str
    skeleton: bytes
    entries: tuple[TensorEntry, ...]
    sources: list[str | None]
    inline: dict[int, np.ndarray]


@functools.cache
def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of ``extract_tensors``' arrays for a tensor of ``dtype``.

    numpy's own equivalent where it has one; for a dtype numpy lacks (``bfloat16``,
    ``float8_*``, ``complex32``...), the unsigned integer of the same size (``uint16`` for
    ``bfloat16``, ``uint8`` for ``float8``), whose elements are the tensor's raw bits:
    ``torch.from_numpy(array).view(dtype)`` gives the tensor back, without a copy.
    """
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except TypeError:
        return np.dtype(f"u{dtype.itemsize}")


def _numpy_view(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array of :func:`numpy_dtype`, sharing its memory (CPU tensors)."""
    tensor = tensor.detach().cpu()
    try:
        return tensor.numpy()
    except TypeError:  # a dtype numpy lacks: its raw bits, through the signed integer of its size
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
        return tensor.view(as_int).numpy().view(numpy_dtype(tensor.dtype))


def _arrays(tensors: Mapping[str, torch.Tensor]) -> OrderedDict[str, np.ndarray]:
    """Each tensor as a numpy array of its shape, viewing its memory (0.x's ``extract_tensors`` dict).

    Arrays of dtypes numpy lacks hold the raw bits (see :func:`numpy_dtype`).
    """
    return OrderedDict((name, _numpy_view(tensor)) for name, tensor in tensors.items())


def _state_dict(model: Any) -> dict[str, torch.Tensor]:
    state = model.state_dict
    return dict(state(keep_vars=True) if callable(state) else state)


def _address(tensor: torch.Tensor) -> tuple[int, torch.dtype, tuple[int, ...], tuple[int, ...]]:
    return tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride())


class _Span:
    """The bytes an array's elements cover, as a ``uint8`` numpy view (keeps the array alive)."""

    def __init__(self, array: np.ndarray, nbytes: int) -> None:
        self.array = array
        data = (array.ctypes.data, not array.flags.writeable)
        self.__array_interface__ = {"data": data, "shape": (nbytes,), "typestr": "|u1", "version": 3}


def _buffer_of(name: str, array: Any, entry: TensorEntry) -> tuple[np.ndarray, tuple[int, ...]]:
    """The bytes ``array`` covers (no copy) and its strides in elements, checked against ``entry``."""
    expected = numpy_dtype(entry.dtype)
    if not isinstance(array, np.ndarray) or array.dtype != expected or array.shape != entry.shape:
        got = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else type(array).__qualname__
        raise UnsupportedModelError(
            f"replace_tensors(): tensors[{name!r}] is {got}, but the model's tensor is {entry.dtype} of "
            f"shape {entry.shape}, held as a numpy {expected} array. Pass the arrays extract_tensors() "
            "returned, or arrays of the same shapes and dtypes."
        )
    itemsize = expected.itemsize
    if any(stride < 0 or stride % itemsize for stride in array.strides):
        array = np.ascontiguousarray(array)  # reversed or unaligned strides: torch cannot view them
    nbytes = 0 if array.size == 0 else sum((n - 1) * s for n, s in zip(array.shape, array.strides)) + itemsize
    return np.asarray(_Span(array, nbytes)), tuple(s // itemsize for s in array.strides)


def _rebuild_extracted(model_bytes: bytes, tensors: Mapping[str, np.ndarray]) -> Any:
    """The model :meth:`Family.extract_tensors` split, rebuilt by its backend around ``tensors``' arrays."""
    extracted: _ExtractedModel = pickle.loads(model_bytes)
    entries: list[TensorEntry] = []
    buffers: list[np.ndarray] = []
    for index, (entry, source) in enumerate(zip(extracted.entries, extracted.sources)):
        if source is None:
            array: Any = extracted.inline[index]
        elif source in tensors:
            array = tensors[source]
        else:
            raise UnsupportedModelError(
                f"replace_tensors(): tensors has no {source!r}, which this model needs. Pass the whole "
                "dictionary extract_tensors() returned."
            )
        buffer, stride = _buffer_of(source or f"tensor {index}", array, entry)
        entries.append(replace(entry, storage=len(buffers), byte_offset=0, stride=stride))
        buffers.append(buffer)
    table = TensorTable(tuple(entries), tuple(buffers), sum(b.nbytes for b in buffers))
    payload = ModelPayload(extracted.backend, extracted.skeleton, table)
    return get_backend(payload.backend).rebuild(payload, LoadOptions())


def _run_stored_model(model: Any, args: Sequence[Any], kwargs: Mapping[str, Any] | None, method_name: str) -> Any:
    """Task body of ``call_model``: rebuild the model Ray resolved (stored, or extract_tensors' pair) and call it."""
    if isinstance(model, tuple):
        loaded = _rebuild_extracted(*model)
    else:
        loaded = ActorWrapper.deserialize(pipeline=None, model_refs={BARE_MODEL: model}).load()
    with torch.no_grad():
        return getattr(loaded, method_name)(*args, **(kwargs or {}))


@functools.cache
def _stored_model_task() -> Any:
    return ray.remote(_run_stored_model)


class CallModelTask:
    """0.x's ``call_model``, a Ray remote function: ``call_model.remote(model_ref, args, kwargs, method_name)``.

    ``model_ref`` is what :func:`prepare_model_for_actors` (or ``wrapper.model_refs``)
    gives, or ``ray.put(extract_tensors(model))``. Each ``.remote`` call warns once.
    """

    def __init__(self, family: Family, options: dict[str, Any] | None = None) -> None:
        self._family = family
        self._options = dict(options or {})

    def options(self, **options: Any) -> CallModelTask:
        """The same task with Ray options (``num_cpus``...), as for a remote function."""
        return CallModelTask(self._family, {**self._options, **options})

    def remote(
        self,
        model_ref: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        method_name: str = "__call__",
    ) -> ray.ObjectRef:
        """Submit the task; return the ObjectRef of the method's result."""
        self._family._warn("call_model", f"{self._family.task_wrapper}(model)(...)", "ray_zerocopy.nn")
        task = _stored_model_task()
        if self._options:
            task = task.options(**self._options)
        return task.remote(model_ref, tuple(args), kwargs, method_name)


#: The eager functions (``ray_zerocopy``, ``.invoke``, ``.actor`` and ``ray_zerocopy.nn``).
EAGER = Family("ray_zerocopy", "TaskWrapper", "ActorWrapper", jit=False)
#: The TorchScript functions (``ray_zerocopy.jit``, ``.jit.invoke``, ``.jit.actor``).
JIT = Family("ray_zerocopy.jit", "JITTaskWrapper", "JITActorWrapper", jit=True)

# Eager models: ray_zerocopy, ray_zerocopy.invoke, ray_zerocopy.actor (this project's first functions).
rewrite_pipeline = EAGER.rewrite_pipeline
prepare_model_for_actors = EAGER.prepare_model_for_actors
load_model_in_actor = EAGER.load_model_in_actor
rewrite_pipeline_for_actors = EAGER.rewrite_pipeline_for_actors
load_pipeline_in_actor = EAGER.load_pipeline_in_actor

# Eager models, 0.x's ray_zerocopy.nn (rewrite_pipeline is the one above).
prepare_pipeline = EAGER.prepare_pipeline
load_pipeline_for_actors = EAGER.load_pipeline_for_actors
load_pipeline_for_tasks = EAGER.load_pipeline_for_tasks
model_info_to_model_refs = EAGER.model_info_to_model_refs

# TorchScript models: ray_zerocopy.jit, ray_zerocopy.jit.invoke and ray_zerocopy.jit.actor
# import these under the names without ``jit_``.
jit_rewrite_pipeline = JIT.rewrite_pipeline
prepare_jit_model_for_actors = JIT.prepare_model_for_actors
load_jit_model_in_actor = JIT.load_model_in_actor
jit_rewrite_pipeline_for_actors = JIT.rewrite_pipeline_for_actors
jit_load_pipeline_in_actor = JIT.load_pipeline_in_actor
jit_prepare_pipeline_for_actors = JIT.prepare_pipeline_for_actors
jit_load_pipeline_for_actors = JIT.load_pipeline_for_actors
jit_prepare_pipeline_for_tasks = JIT.prepare_pipeline_for_tasks
jit_load_pipeline_for_tasks = JIT.load_pipeline_for_tasks
jit_model_info_to_model_refs = JIT.model_info_to_model_refs
jit_call_model = CallModelTask(JIT)
jit_extract_tensors = JIT.extract_tensors
jit_extract_tensors_minimal = JIT.extract_tensors_minimal
jit_replace_tensors = JIT.replace_tensors

__all__ = [
    "EAGER",
    "JIT",
    "CallModelTask",
    "Family",
    "jit_call_model",
    "jit_extract_tensors",
    "jit_extract_tensors_minimal",
    "jit_load_pipeline_for_actors",
    "jit_load_pipeline_for_tasks",
    "jit_load_pipeline_in_actor",
    "jit_model_info_to_model_refs",
    "jit_prepare_pipeline_for_actors",
    "jit_prepare_pipeline_for_tasks",
    "jit_replace_tensors",
    "jit_rewrite_pipeline",
    "jit_rewrite_pipeline_for_actors",
    "load_jit_model_in_actor",
    "load_model_in_actor",
    "load_pipeline_for_actors",
    "load_pipeline_for_tasks",
    "load_pipeline_in_actor",
    "model_info_to_model_refs",
    "numpy_dtype",
    "prepare_jit_model_for_actors",
    "prepare_model_for_actors",
    "prepare_pipeline",
    "rewrite_pipeline",
    "rewrite_pipeline_for_actors",
]
