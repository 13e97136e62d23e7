"""Named shared models: publish a model under a cluster-wide name, load it by name anywhere.

A wrapper (:class:`~ray_zerocopy_core.wrappers.ActorWrapper`) belongs to the process
that created it: its weights live while that process does. That suits a batch job.
A long-lived service (Ray Serve replicas that come and go, several applications using
one model) needs weights that outlive the script that deployed them. This module gives
each model a **name**: :func:`publish` stores it once, owned by a detached *holder
actor*; :func:`load_published` returns the ready model in any worker or driver of the
cluster, zero-copy and write-protected, like ``wrapper.load()``.

Example::

    from ray_zerocopy import get_or_publish, load_published, publish

    publish("classifier", model)                 # a deploy script; it may exit now
    model = load_published("classifier")         # any replica, actor, task or driver

    # or, in each replica: the first caller builds it (once), the others load it
    model = get_or_publish("classifier", lambda: torch.load("classifier.pt", weights_only=False))

How it works: one detached actor per name (``num_cpus=0``, in the Ray namespace
:data:`NAMESPACE`, whatever the caller's namespace) owns the stored Ray object(s) of the
model. Given a model, the caller stores it and the holder copies each stored object
into one it owns (shared memory to shared memory; Ray 2.56+ cannot transfer ownership),
then the caller's object is freed; given a loader, the holder builds the model, stores
it and drops its own tensors. Either way the node then holds one copy. The holder also keeps a small
record in Ray's GCS key-value store, so that a load can tell a name that was never
published from one whose holder died.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import inspect
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray import cloudpickle

from ray_zerocopy_core.backend import LoadOptions
from ray_zerocopy_core.errors import ModelNotPublishedError, WeightsUnavailableError
from ray_zerocopy_core.inspection import private_memory_bytes
from ray_zerocopy_core.modes.actor import load_pipeline
from ray_zerocopy_core.pipeline import SharedPipeline, find_model_attrs
from ray_zerocopy_core.registry import backend_for, find_backend

#: The Ray namespace of the holder actors: names are cluster-wide, whatever namespace
#: the calling job runs in.
NAMESPACE = "ray_zerocopy_named"

_KV_NAMESPACE = "ray_zerocopy_named"
_RELEASE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class PublishedModel:
    """What is published under one name (returned by :func:`publish` and :func:`list_published`).

    Attributes:
        name: the cluster-wide name.
        version: 1 for the first publish of the name, one more on every republish
            (restarts at 1 if the holder had died).
        nbytes: weight bytes in the object store, all models of the pipeline together.
        backends: pipeline attribute to the backend that stored it (``{"": "nn"}`` for
            a bare eager model).
        built_by: ``"caller"`` (a model was given) or ``"loader"`` (the holder built it).
        published_at: when this version was stored (seconds since the epoch).
    """

    name: str
    version: int
    nbytes: int
    backends: dict[str, str] = field(default_factory=dict)
    built_by: str = "caller"
    published_at: float = 0.0

    def __str__(self) -> str:
        kinds = ", ".join(sorted(set(self.backends.values()))) or "?"
        return f"{self.name!r} (v{self.version}, {self.nbytes / 1024**2:.1f} MiB, {kinds})"


@dataclass
class _Record:
    """What the holder keeps and hands to loaders: the pipeline without weights, the refs."""

    skeleton: bytes
    refs: dict[str, ray.ObjectRef]
    nbytes: dict[str, int]
    options: LoadOptions
    info: PublishedModel


def _trim_heap() -> None:
    """Give freed heap pages back to the OS (glibc), so dropped tensors leave the process."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _kv_put(name: str, info: PublishedModel) -> None:
    from ray.experimental import internal_kv

    value = json.dumps({"version": info.version, "nbytes": info.nbytes, "backends": info.backends})
    internal_kv._internal_kv_put(name, value, overwrite=True, namespace=_KV_NAMESPACE)


def _kv_get(name: str) -> dict[str, Any] | None:
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(name, namespace=_KV_NAMESPACE)
    return None if value is None else dict(json.loads(value))


def _kv_delete(name: str) -> None:
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(name, namespace=_KV_NAMESPACE)


def _kv_names() -> list[str]:
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list("", namespace=_KV_NAMESPACE)
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys)


def _backend_names(obj: Any, model_attr_names: Iterable[str] | None) -> dict[str, str]:
    if model_attr_names is None and find_backend(obj) is not None:
        return {"": backend_for(obj).name}
    names = list(model_attr_names) if model_attr_names is not None else find_model_attrs(obj)
    return {attr: backend_for(getattr(obj, attr)).name for attr in names}


class _ModelHolder:
    """The detached actor that owns one name's stored model (methods run one at a time)."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._record: _Record | None = None
        self._last_version = 0

    def ready(self) -> bool:
        return True

    def _install(
        self,
        skeleton: bytes,
        refs: dict[str, ray.ObjectRef],
        nbytes: dict[str, int],
        options: LoadOptions,
        backends: dict[str, str],
        built_by: str,
    ) -> PublishedModel:
        self._last_version += 1
        info = PublishedModel(
            name=self._name,
            version=self._last_version,
            nbytes=sum(nbytes.values()),
            backends=dict(backends),
            built_by=built_by,
            published_at=time.time(),
        )
        # Replacing the record drops the holder's refs to the previous version: Ray frees
        # it once the workers that loaded it drop their models.
        self._record = _Record(skeleton, dict(refs), dict(nbytes), options, info)
        _kv_put(self._name, info)
        return info

    def install(
        self,
        skeleton: bytes,
        refs: dict[str, ray.ObjectRef],
        nbytes: dict[str, int],
        options: LoadOptions,
        backends: dict[str, str],
    ) -> PublishedModel:
        """Take over a model the caller stored: copy each object into one this actor owns.

        Ray (2.56 and later) cannot hand an object's ownership to another process, so
        the holder re-puts each stored object: ``ray.get`` maps the caller's bytes
        (no private copy here) and ``ray.put`` copies them, shared memory to shared
        memory, into an object owned by this actor. The caller's object is freed when
        the caller drops its references, right after this returns.
        """
        owned = {}
        for attr, ref in refs.items():
            value = ray.get(ref)
            owned[attr] = ray.put(value)
            del value
        return self._install(skeleton, owned, nbytes, options, backends, "caller")

    def build(
        self,
        loader: Callable[[], Any],
        model_attr_names: list[str] | None,
        options: LoadOptions,
        only_if_missing: bool,
    ) -> PublishedModel:
        """Run ``loader`` here, store what it returns, keep only the stored copy."""
        if only_if_missing and self._record is not None:
            return self._record.info
        model = loader()
        shared = SharedPipeline.share(model, model_attr_names)
        backends = _backend_names(model, model_attr_names)
        del model
        skeleton = cloudpickle.dumps(shared.skeleton)
        info = self._install(skeleton, shared.refs, shared.nbytes, options, backends, "loader")
        del shared
        _trim_heap()
        return info

    def record(self) -> _Record | None:
        return self._record

    def info(self) -> PublishedModel | None:
        return None if self._record is None else self._record.info

    def private_memory(self) -> int:
        """This holder's private memory in bytes (the stored weights are not in it)."""
        _trim_heap()
        return private_memory_bytes()

    def release(self) -> None:
        self._record = None
        _kv_delete(self._name)


_Holder: Any = ray.remote(num_cpus=0, max_restarts=0)(_ModelHolder)


def _ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"A published model's name must be a non-empty string, got {name!r}.")


def _holder_handle(name: str) -> Any | None:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _create_holder(name: str, holder_options: dict[str, Any] | None) -> Any:
    """The holder of ``name``, created if missing (atomically: one holder per name)."""
    options = {
        **(holder_options or {}),
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
    }
    holder = _Holder.options(**options).remote(name)
    ray.get(holder.ready.remote())
    return holder


def _published_summary() -> str:
    models = list_published()
    if not models:
        return "No model is published at present."
    return "Published models: " + "; ".join(str(m) for m in models) + "."


def _not_published(name: str) -> ModelNotPublishedError:
    if _kv_get(name) is not None:
        return _holder_gone(name)
    return ModelNotPublishedError(
        f"No model is published under the name {name!r}. {_published_summary()} Publish it "
        f"first with publish({name!r}, model_or_loader), or use get_or_publish({name!r}, loader)."
    )


def _holder_gone(name: str, cause: BaseException | None = None) -> ModelNotPublishedError:
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return ModelNotPublishedError(
        f"The published model {name!r} is no longer available: its holder actor (detached, "
        f"namespace {NAMESPACE!r}) died, e.g. killed or lost with its node, and the stored "
        f"weights went with it{detail}. Models already loaded keep working. Publish it again "
        f"with publish({name!r}, model_or_loader), or call get_or_publish({name!r}, loader), "
        "which recreates the holder."
    )


def _is_loader(obj: Any, model_attr_names: Iterable[str] | None) -> bool:
    if find_backend(obj) is not None or model_attr_names is not None:
        return False
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return True
    if getattr(obj, "__dict__", None) is not None and find_model_attrs(obj):
        return False  # a pipeline object that happens to be callable
    return callable(obj)


def publish(
    name: str,
    model_or_loader: Any,
    *,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
    writable: bool = False,
    prefault: bool = False,
    holder_options: dict[str, Any] | None = None,
) -> PublishedModel:
    """Store a model (or pipeline) under ``name``, owned by a detached holder actor.

    The weights outlive the calling process: a deploy script can publish and exit, and
    replicas started later still :func:`load_published` the model. Publishing a name
    that exists replaces it (a new version); workers that loaded the old version keep
    it until they drop it, then Ray frees it.

    Example::

        publish("encoder", model)                              # the caller builds the model
        publish("encoder", lambda: build_encoder("ckpt.pt"))   # the holder builds it

    Args:
        name: cluster-wide name (any non-empty string).
        model_or_loader: an ``nn.Module`` (or any object a backend handles), a pipeline
            whose attributes are models, or a zero-argument callable that returns one.
            A loader runs inside the holder actor, so this process never holds the model.
        model_attr_names: pipeline attributes to share; found automatically if None.
        device, use_fast_load, writable, prefault: the defaults of
            :func:`load_published` for this model (as for ``ActorWrapper``).
        holder_options: extra Ray actor options for the holder (e.g. ``resources`` or a
            ``scheduling_strategy`` to place it); by default it takes no CPU.

    Returns:
        The :class:`PublishedModel` now stored under ``name``.
    """
    _check_name(name)
    _ensure_ray()
    names = list(model_attr_names) if model_attr_names is not None else None
    options = LoadOptions(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
    loader = _is_loader(model_or_loader, names)
    holder = _create_holder(name, holder_options)
    try:
        if loader:
            info = ray.get(holder.build.remote(model_or_loader, names, options, False))
        else:
            shared = SharedPipeline.share(model_or_loader, names)
            backends = _backend_names(model_or_loader, names)
            skeleton = cloudpickle.dumps(shared.skeleton)
            info = ray.get(holder.install.remote(skeleton, shared.refs, shared.nbytes, options, backends))
            shared.release()  # the holder has its own copy now: free ours
    except ray.exceptions.RayActorError as exc:
        raise _holder_gone(name, exc) from exc
    except BaseException:
        _drop_if_empty(holder)  # a bad model or a failing loader leaves no empty holder behind
        raise
    return info


def _drop_if_empty(holder: Any) -> None:
    """Kill ``holder`` if it stores nothing (its first model could not be built or stored)."""
    try:
        if ray.get(holder.info.remote(), timeout=_RELEASE_TIMEOUT_S) is None:
            ray.kill(holder, no_restart=True)
    except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        pass


def get_or_publish(
    name: str,
    loader: Callable[[], Any],
    *,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool | None = None,
    writable: bool | None = None,
    prefault: bool | None = None,
    holder_options: dict[str, Any] | None = None,
) -> Any:
    """Load the model published as ``name``, publishing it with ``loader`` first if needed.

    Safe when many processes call it at once (say, every replica's constructor): one
    holder actor is created for the name, ``loader`` runs once, inside that holder, and
    one copy is stored; every caller then gets a zero-copy load. If the holder had died,
    this recreates it. An existing model is returned as is, whatever ``loader`` would build.

    Example::

        class Replica:
            def __init__(self):
                self.model = get_or_publish("resnet50", lambda: torchvision.models.resnet50(weights="DEFAULT"))

    Args:
        name: cluster-wide name.
        loader: zero-argument callable that returns the model (or pipeline); it runs in
            the holder actor, so it and what it uses must be picklable.
        model_attr_names: pipeline attributes to share; found automatically if None.
        device, use_fast_load, writable, prefault: how this caller's copy is loaded (as
            ``wrapper.load()``); when this call publishes, they also become the model's
            defaults. None keeps the published default.
        holder_options: extra Ray actor options for the holder, if this call creates it.

    Returns:
        The ready model or pipeline.
    """
    _check_name(name)
    if not callable(loader):
        raise TypeError(
            f"get_or_publish needs a zero-argument callable that builds the model, got "
            f"{type(loader).__qualname__}. To publish a model you already have, use publish()."
        )
    _ensure_ray()
    names = list(model_attr_names) if model_attr_names is not None else None
    defaults = LoadOptions(
        device=device, use_fast_load=bool(use_fast_load), writable=bool(writable), prefault=bool(prefault)
    )
    for attempt in range(2):
        holder = _create_holder(name, holder_options)
        try:
            ray.get(holder.build.remote(loader, names, defaults, True))
        except ray.exceptions.RayActorError as exc:
            if attempt == 1:
                raise _holder_gone(name, exc) from exc
            continue  # the holder died between lookup and call: make a new one
        except BaseException:
            _drop_if_empty(holder)  # the loader failed: callers queued behind retry with a new holder
            raise
        try:
            return load_published(
                name, device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault
            )
        except ModelNotPublishedError:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


def load_published(
    name: str,
    *,
    device: str | torch.device | None = None,
    use_fast_load: bool | None = None,
    writable: bool | None = None,
    prefault: bool | None = None,
) -> Any:
    """Return the ready model published as ``name``, in this process.

    On the CPU (the default) its tensors alias the node's object store and are
    read-only, exactly as ``wrapper.load()``; a worker on another node gets the object
    transferred to its node once. Arguments left as None keep the defaults given to
    :func:`publish`.

    Example::

        @serve.deployment
        class Classifier:
            def __init__(self):
                self.model = load_published("classifier")

    Raises:
        ModelNotPublishedError: nothing is published under ``name`` (the message lists
            what is), or its holder actor died (the message says how to republish).
    """
    _check_name(name)
    _ensure_ray()
    holder = _holder_handle(name)
    if holder is None:
        raise _not_published(name)
    try:
        record: _Record | None = ray.get(holder.record.remote())
    except ray.exceptions.RayActorError as exc:
        raise _holder_gone(name, exc) from exc
    if record is None:
        raise _not_published(name)
    shared = SharedPipeline(cloudpickle.loads(record.skeleton), dict(record.refs), dict(record.nbytes))
    stored = record.options
    options = LoadOptions(
        device=stored.device if device is None else device,
        use_fast_load=stored.use_fast_load if use_fast_load is None else use_fast_load,
        writable=stored.writable if writable is None else writable,
        prefault=stored.prefault if prefault is None else prefault,
    )
    try:
        return load_pipeline(shared, options)
    except WeightsUnavailableError as exc:
        raise _holder_gone(name, exc) from exc


def list_published() -> list[PublishedModel]:
    """Every model published in the cluster now, sorted by name (sizes, backends, versions).

    Example::

        for model in list_published():
            print(model.name, model.version, model.nbytes, model.backends)
    """
    _ensure_ray()
    found = []
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if not isinstance(entry, dict) or entry.get("namespace") != NAMESPACE:
            continue
        holder = _holder_handle(str(entry["name"]))
        if holder is None:
            continue
        try:
            info = ray.get(holder.info.remote(), timeout=_RELEASE_TIMEOUT_S)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue
        if info is not None:
            found.append(info)
    return sorted(found, key=lambda m: m.name)


def unpublish(name: str, *, missing_ok: bool = False) -> bool:
    """Remove the model published as ``name`` and stop its holder actor.

    The object-store memory is freed once every worker that loaded the model has
    dropped it (their loads keep working until then). New loads of ``name`` raise
    :class:`~ray_zerocopy_core.errors.ModelNotPublishedError`.

    Returns:
        True if something was published under ``name`` (or a dead holder's record
        was left), False if nothing was and ``missing_ok`` is set.

    Raises:
        ModelNotPublishedError: nothing is published under ``name`` and ``missing_ok``
            is False.
    """
    _check_name(name)
    _ensure_ray()
    holder = _holder_handle(name)
    stale = _kv_get(name) is not None
    if holder is None:
        if stale:
            _kv_delete(name)
            return True
        if missing_ok:
            return False
        raise _not_published(name)
    # Already dead or stuck: killing it below releases its objects as well.
    with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        ray.get(holder.release.remote(), timeout=_RELEASE_TIMEOUT_S)
    ray.kill(holder, no_restart=True)
    _kv_delete(name)
    return True


def holder_private_memory(name: str) -> int:
    """Private memory (bytes) of the holder actor of ``name``: shows it keeps no weights.

    The stored weights are shared memory and do not count; after :func:`publish` with a
    loader, this stays far below the model's size.
    """
    holder = _holder_handle(name)
    if holder is None:
        raise _not_published(name)
    return int(ray.get(holder.private_memory.remote()))


__all__ = [
    "NAMESPACE",
    "PublishedModel",
    "get_or_publish",
    "holder_private_memory",
    "list_published",
    "load_published",
    "publish",
    "unpublish",
]
