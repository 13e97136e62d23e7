"""Pipelines: objects whose attributes are models, shared one Ray object per model.

A bare model is handled like a pipeline of one. :class:`SharedPipeline` holds what
workers need: the pipeline without its models (the *skeleton*), and one ObjectRef per
model. It is small to pickle: weights never travel with it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import CodeType, FunctionType
from typing import Any

import ray
import torch
from ray import cloudpickle

from ray_zerocopy_core.checkpoint import Checkpoint
from ray_zerocopy_core.errors import BackendError, BackendNotInstalledError, PipelineError, WrapperReleasedError
from ray_zerocopy_core.plugin import Backend, split_tensors
from ray_zerocopy_core.sharing import model_backend, require_backend, share_model

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
        backend = model_backend(value)
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
            models[name] = (value, require_backend(value))
        except BackendNotInstalledError:
            raise
        except BackendError as exc:
            raise PipelineError(
                f"Attribute {name!r} of {kind} cannot be shared: {exc} "
                "model_attr_names must name attributes that hold models (nn.Module, ScriptModule, ExportedProgram...)."
            ) from exc
    return models


#: Tensor bytes a pipeline skeleton may carry by value (small constants are fine); more
#: means a model travels to every worker as a private copy, which is refused.
SKELETON_TENSOR_LIMIT = 64 * 1024


def _holds_tensors(value: Any) -> bool:
    """Whether pickling ``value`` would carry tensor data (or cannot be done at all)."""
    if isinstance(value, (torch.Tensor, torch.nn.Module)):
        return True
    try:
        return bool(split_tensors(value)[1])
    except Exception:
        return True


def _by_value_functions(cls: type) -> Iterator[tuple[str, FunctionType]]:
    """``(qualname, function)`` of the methods cloudpickle sends by value (classes of ``__main__``)."""
    for klass in cls.__mro__:
        if klass.__module__ != "__main__":
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


def skeleton_culprits(skeleton: Any, suspect: Callable[[Any], bool]) -> list[str]:
    """Where the skeleton reaches values that ``suspect`` flags: attributes, captured globals and closures."""
    found = [f"attribute {name!r}" for name, value in vars(skeleton).items() if suspect(value)]
    for qualname, function in _by_value_functions(type(skeleton)):
        for name in sorted(_code_names(function.__code__) & set(function.__globals__)):
            if suspect(function.__globals__[name]):
                found.append(f"global {name!r} (used by {qualname})")
        for name, cell in zip(function.__code__.co_freevars, function.__closure__ or ()):
            if name != "__class__" and suspect(cell.cell_contents):
                found.append(f"closure variable {name!r} (used by {qualname})")
    return list(dict.fromkeys(found))


def check_skeleton(skeleton: Any) -> None:
    """Refuse a skeleton that cannot be pickled or would carry weights to every worker by value.

    A pipeline class defined in a script's ``__main__`` is pickled by value, together
    with the globals and closure variables its methods use: a model reached that way
    would travel (and be copied) to every worker. The error names the culprit.
    """
    kind = type(skeleton).__qualname__
    try:
        _, tensors = split_tensors(skeleton)
    except Exception as exc:
        culprits = skeleton_culprits(skeleton, lambda value: not _picklable(value))
        where = f" ({', '.join(culprits)})" if culprits else ""
        raise PipelineError(
            f"The pipeline {kind} cannot be pickled{where}: {exc}. Workers receive the pipeline "
            "without its models, so everything else it holds or its methods use must be picklable: "
            "give models to the pipeline as attributes (self.model = model), and create other "
            "unpicklable resources lazily inside the worker."
        ) from exc
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in tensors}
    carried = sum(size for _, size in storages)
    if carried > SKELETON_TENSOR_LIMIT:
        culprits = skeleton_culprits(skeleton, _holds_tensors)
        where = ", ".join(culprits) or "somewhere in its state"
        raise PipelineError(
            f"The pipeline {kind} would carry {carried / 1024**2:.1f} MiB of tensors to every worker "
            f"by value, outside the shared models: {where}. A model a method reaches through a "
            "global or closure variable is pickled with the pipeline, and every worker gets a "
            "private copy. Pass the model to the pipeline instead (as a constructor argument, "
            "stored as an attribute: self.model = model), so it is shared zero-copy."
        )


def _picklable(value: Any) -> bool:
    try:
        cloudpickle.dumps(value)
    except Exception:
        return False
    return True


def _check_methods(models: dict[str, Any], method_names: Iterable[str]) -> None:
    """Raise :class:`PipelineError` for a method name that no model has."""
    for method in method_names:
        if not any(callable(getattr(model, method, None)) for model in models.values()):
            kinds = ", ".join(sorted({type(model).__qualname__ for model in models.values()}))
            raise PipelineError(
                f"method_names includes {method!r}, but no model ({kinds}) has such a method. "
                "Name methods the models define, e.g. method_names=['__call__', 'encode']."
            )


@dataclass
class SharedPipeline:
    """A pipeline or bare model whose models live in the object store.

    Attributes:
        skeleton: the pipeline with every model attribute set to ``None`` (``None`` for
            a bare model).
        refs: attribute name to the ObjectRef of that model (``""`` for a bare model).
        nbytes: weight bytes per attribute.
    """

    skeleton: Any
    refs: dict[str, ray.ObjectRef]
    nbytes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def share(
        cls,
        obj: Any,
        model_attr_names: str | Iterable[str] | None = None,
        method_names: Iterable[str] = (),
    ) -> SharedPipeline:
        """Put each model of ``obj`` (or ``obj`` itself, if it is a model) in the object store.

        ``method_names`` (task mode) must each be a method of at least one model; this is
        checked here, before anything is stored, rather than in a remote task later.
        """
        backend = model_backend(obj) if model_attr_names is None else None
        if backend is not None:
            models = {BARE_MODEL: (obj, backend)}
            skeleton = None
        else:
            models = find_models(obj) if model_attr_names is None else named_models(obj, model_attr_names)
            if not models:
                raise PipelineError(
                    f"No model found in {type(obj).__qualname__}: none of its attributes is a model "
                    "a backend can share (nn.Module, ScriptModule, ExportedProgram...). Give the models "
                    "as attributes, or name them with model_attr_names=[...]."
                )
            skeleton = copy.copy(obj)
            for name in models:
                setattr(skeleton, name, None)
            check_skeleton(skeleton)
        built = {name: model for name, (model, _) in models.items() if not isinstance(model, Checkpoint)}
        if built:  # a checkpoint's module exists only while its files are read: its methods are not checked
            _check_methods(built, method_names)
        refs: dict[str, ray.ObjectRef] = {}
        sizes: dict[str, int] = {}
        for name, (model, backend_of_model) in models.items():
            what = f"model {name!r}" if name else "model"
            refs[name], sizes[name] = share_model(model, backend_of_model, what=what)
        return cls(skeleton, refs, sizes)

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

    def assemble(self, models: dict[str, Any]) -> Any:
        """A copy of the skeleton with ``models`` in place (or the bare model itself)."""
        if self.is_bare_model:
            return models[BARE_MODEL]
        pipeline = copy.copy(self.skeleton)
        for name, model in models.items():
            setattr(pipeline, name, model)
        return pipeline

    def release(self) -> None:
        """Drop this handle's references; Ray frees the objects once no worker uses them."""
        self.refs = {}
        self.nbytes = {}
