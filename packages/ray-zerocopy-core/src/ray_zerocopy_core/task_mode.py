"""Task mode: each call to a model runs as a Ray task on a rebuilt, cached model.

The pipeline's model attributes are replaced by :class:`RemoteModel` shims. Calling a
shim (or one of its allowed methods) submits a task that fetches the model on the
worker, rebuilds it zero-copy on first use, and keeps it in a small per-process LRU
cache keyed by object, so later calls on that worker skip the rebuild.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import ray

from ray_zerocopy_core.cluster import NodeCopies
from ray_zerocopy_core.errors import UnknownMethodError
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import SharedPipeline
from ray_zerocopy_core.sharing import rebuild_model

#: Environment variable that sets how many rebuilt models a worker process keeps.
CACHE_SIZE_ENV = "RAY_ZEROCOPY_TASK_CACHE_SIZE"
DEFAULT_CACHE_SIZE = 4


class ModelCache:
    """A bounded LRU of rebuilt models, one per worker process.

    ``misses`` counts the rebuilds, so a test or a probe can tell a warm worker from a cold one.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._models: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0

    def get_or_build(self, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
        """The cached model for ``key``, building (and maybe evicting) on a miss."""
        with self._lock:
            model = self._models.get(key)
            if model is not None:
                self._models.move_to_end(key)
                return model
        model = build()
        with self._lock:
            self.misses += 1
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
        return model

    def __len__(self) -> int:
        return len(self._models)

    def clear(self) -> None:
        """Drop every cached model."""
        with self._lock:
            self._models.clear()


_cache: ModelCache | None = None


def worker_cache() -> ModelCache:
    """This process's model cache (created on first use, sized by ``RAY_ZEROCOPY_TASK_CACHE_SIZE``)."""
    global _cache
    if _cache is None:
        _cache = ModelCache(max(1, int(os.environ.get(CACHE_SIZE_ENV, DEFAULT_CACHE_SIZE))))
    return _cache


def call_cached_model(
    stored: tuple[ray.ObjectRef, str, NodeCopies | None],
    method: str,
    options: LoadOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Task body: run ``method`` of the (cached) model of ``stored``: its ObjectRef, attribute and node copies."""
    ref, attr, copies = stored
    key = (ref.binary(), options)

    def build() -> Any:
        return rebuild_model(copies.head(attr, ref) if copies is not None else ref, options)

    model = worker_cache().get_or_build(key, build)
    return getattr(model, method)(*args, **kwargs)


@functools.cache
def _remote_call() -> Any:
    return ray.remote(call_cached_model)


class RemoteModel:
    """Stands in for a model in task mode: calls run as Ray tasks on the shared weights.

    ``shim(x)`` calls the model's ``__call__``; ``shim.encode(x)`` calls ``encode`` if it
    is one of the allowed ``method_names``. Each call blocks until the task returns.
    """

    def __init__(
        self,
        ref: ray.ObjectRef,
        method_names: Sequence[str],
        options: LoadOptions,
        task_options: dict[str, Any] | None = None,
        name: str = "model",
        attr: str = "",
        copies: NodeCopies | None = None,
    ) -> None:
        self._stored = (ref, attr, copies)  # nested, so Ray passes the ref rather than the model
        self._method_names = tuple(method_names)
        self._options = options
        self._task_options = dict(task_options or {})
        self._name = name

    @property
    def method_names(self) -> tuple[str, ...]:
        """Methods this shim may call remotely."""
        return self._method_names

    def _run(self, method: str, *args: Any, **kwargs: Any) -> Any:
        remote = _remote_call()
        if self._task_options:
            remote = remote.options(**self._task_options)
        return ray.get(remote.remote(self._stored, method, self._options, args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if "__call__" not in self._method_names:
            raise UnknownMethodError(self._not_allowed("__call__"))
        return self._run("__call__", *args, **kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("_") and name not in self.__dict__.get("_method_names", ()):
            raise AttributeError(name)
        if name in self._method_names:
            return functools.partial(self._run, name)
        raise UnknownMethodError(self._not_allowed(name))

    def _not_allowed(self, method: str) -> str:
        return (
            f"{method!r} is not a remote method of {self._name}: allowed are "
            f"{', '.join(map(repr, self._method_names))}. Add it to method_names=... when wrapping."
        )

    def __repr__(self) -> str:
        return f"RemoteModel({self._name}, methods={self._method_names})"


def rewrite_for_tasks(
    shared: SharedPipeline,
    method_names: Sequence[str],
    options: LoadOptions,
    task_options: dict[str, Any] | None = None,
) -> Any:
    """The pipeline with each model replaced by a :class:`RemoteModel` (or the bare shim)."""
    shared.check_available()
    return shared.assemble(
        {
            name: RemoteModel(
                ref, method_names, options, task_options, repr(name) if name else "the model", name, shared.copies
            )
            for name, ref in shared.refs.items()
        }
    )
