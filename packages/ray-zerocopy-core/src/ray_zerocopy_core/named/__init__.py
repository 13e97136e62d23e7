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

How it works. A *holder* is a detached actor (``num_cpus=0``, in the Ray namespace
:data:`NAMESPACE`, whatever the caller's namespace) that owns the stored Ray objects of
the models published to it. By default every name goes to one shared holder
(:data:`DEFAULT_HOLDER`), so a node pays for one extra process however many models it
publishes; ``holder="..."`` puts a model in a holder of its own, which then lives and
dies independently. A holder never imports torch nor touches a model (see
:mod:`ray_zerocopy_core.named.holder`): the objects it owns are written by short Ray tasks it
starts, whose return values Ray makes the holder own. Given a model, the caller stores
it and a task copies each stored object, store to store, into a return object of the
holder's (Ray 2.56 and later cannot hand an object's ownership to another process);
the caller's copy is then freed. Given a loader, the task builds the model, stores it
and streams the stored objects back the same way. Either way the node then holds one
copy.

Each name also has a small record in Ray's GCS key-value store (its holder, version,
size and backends), so that a load can tell a name that was never published from one
whose holder died.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
import torch
from ray import cloudpickle

from ray_zerocopy_core.errors import (
    HolderUnavailableError,
    InvalidLoaderError,
    InvalidOptionError,
    ModelNotPublishedError,
    WeightsUnavailableError,
)
from ray_zerocopy_core.named import holder as _holder
from ray_zerocopy_core.pipeline import BARE_MODEL, SharedPipeline, find_models
from ray_zerocopy_core.plugin import LoadOptions, ModelSource, open_payload
from ray_zerocopy_core.process_memory import trim_heap
from ray_zerocopy_core.registry import backend_for, find_backend
from ray_zerocopy_core.sharing import located
from ray_zerocopy_core.store import stored_payload

#: The Ray namespace of the holder actors: names are cluster-wide, whatever namespace
#: the calling job runs in.
NAMESPACE = _holder.NAMESPACE

#: The holder that models go to unless ``holder=`` names another.
DEFAULT_HOLDER = "default"

_CALL_TIMEOUT_S = 60.0
_CLOSING = _holder.CLOSING
_RETRY_S = 30.0
_START_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class PublishedModel:
    """What is published under one name (returned by :func:`publish` and :func:`list_published`).

    Attributes:
        name: the cluster-wide name.
        version: 1 for the first publish of the name, one more on every republish.
        nbytes: weight bytes in the object store, all models of the pipeline together.
        backends: pipeline attribute to the backend that stored it (``{"": "nn"}`` for
            a bare eager model).
        holder: the holder actor that owns it (``"default"`` unless chosen).
        built_by: ``"caller"`` (a model was given) or ``"loader"`` (its loader built it, in
            a task the holder started).
        published_at: when this version was stored (seconds since the epoch).
    """

    name: str
    version: int
    nbytes: int
    backends: dict[str, str] = field(default_factory=dict)
    holder: str = DEFAULT_HOLDER
    built_by: str = "caller"
    published_at: float = 0.0

    def __str__(self) -> str:
        kinds = ", ".join(sorted(set(self.backends.values()))) or "?"
        return f"{self.name!r} (v{self.version}, {self.nbytes / 1024**2:.1f} MiB, {kinds})"


def _backend_names(obj: Any, model_attr_names: Iterable[str] | None) -> dict[str, str]:
    backend = find_backend(obj) if model_attr_names is None else None
    if backend is not None:
        return {"": backend.name}
    if model_attr_names is None:
        return {attr: backend.name for attr, (_, backend) in find_models(obj).items()}
    return {attr: backend_for(getattr(obj, attr)).name for attr in model_attr_names}


def _meta(shared: SharedPipeline, backends: dict[str, str]) -> dict[str, Any]:
    """What a holder keeps besides the refs: plain data, so it never needs torch to read it."""
    return {
        "attrs": list(shared.refs),
        "pipeline": shared.pickled_pipeline(),
        "nbytes": dict(shared.nbytes),
        "backends": backends,
    }


def _build_stream(loader: Callable[[], Any] | ModelSource, model_attr_names: list[str] | None) -> Iterator[Any]:
    """Runs in a task the holder submits: build, store, then stream the metadata and each stored value.

    The task's streamed return objects are owned by the holder. The task's own stored
    copy (from ``SharedPipeline.share``) is released when it ends. A checkpoint is read
    here and its stored form streamed straight from the files, with no copy before it.
    """
    if isinstance(loader, ModelSource):
        yield from _source_stream(loader)
        return
    model = loader()
    shared = SharedPipeline.share(model, model_attr_names)
    backends = _backend_names(model, model_attr_names)
    del model
    yield _meta(shared, backends)
    for ref in shared.refs.values():
        value = ray.get(ref)
        yield value
        del value
    shared.release()
    trim_heap()


def _source_stream(source: ModelSource) -> Iterator[Any]:
    """The metadata, then the stored model opened from ``source`` (a checkpoint: read from its files).

    The source's views (mapped files) live only while its payload is stored, so the node
    holds one copy once the stream ends.
    """
    backend = find_backend(source)
    assert backend is not None
    with open_payload(backend, source) as payload:
        yield {
            "attrs": [BARE_MODEL],
            "pipeline": None,
            "nbytes": {BARE_MODEL: payload.table.nbytes},
            "backends": {BARE_MODEL: backend.name},
        }
        yield stored_payload(located(payload, backend), what=f"model {source}")
        del payload  # the last view of the source: it is closed next
    trim_heap()


def _actor_name(holder: str) -> str:
    return f"holder:{holder}"


def _ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()


def _check_name(name: str, what: str = "A published model's name") -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidOptionError(f"{what} must be a non-empty string, got {name!r}.")


def _holder_handle(holder: str) -> Any | None:
    try:
        return ray.get_actor(_actor_name(holder), namespace=NAMESPACE)
    except ValueError:
        return None


def _create_holder(holder: str, holder_options: dict[str, Any] | None) -> Any:
    """The holder actor ``holder``, created if missing (atomically: one per holder name)."""
    options = {
        "num_cpus": 0,
        "max_restarts": 0,
        "max_concurrency": 64,
        **(holder_options or {}),
        "name": _actor_name(holder),
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
    }
    handle = _holder.remote_holder_class().options(**options).remote(holder)
    try:
        ray.get(handle.ready.remote(), timeout=_START_TIMEOUT_S)
    except ray.exceptions.GetTimeoutError:
        raise HolderUnavailableError(
            f"The ray-zerocopy holder actor {_actor_name(holder)!r} did not start within "
            f"{_START_TIMEOUT_S:.0f} s. The cluster may lack what holder_options asks for "
            f"({holder_options or 'nothing beyond the defaults'}); check `ray status`, or pass "
            "holder_options that some node can satisfy."
        ) from None
    return handle


def _call_holder(holder: str, holder_options: dict[str, Any] | None, method: str, *args: Any) -> Any:
    """Call ``method`` on the holder, recreating it if it died or is closing."""
    deadline = time.monotonic() + _RETRY_S
    while True:
        handle = _create_holder(holder, holder_options)
        try:
            result = ray.get(getattr(handle, method).remote(*args))
        except ray.exceptions.RayActorError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)  # it died between lookup and call: make a new one
            continue
        if isinstance(result, str) and result == _CLOSING:
            if time.monotonic() > deadline:
                raise HolderUnavailableError(
                    f"The ray-zerocopy holder actor {_actor_name(holder)!r} stayed in its closing state (its "
                    f"last model was unpublished) for {_RETRY_S:.0f} s. Something keeps it alive: check "
                    "`ray list actors` for it, or publish to another holder with holder='...'."
                )
            time.sleep(0.1)  # its last model was just unpublished: wait for it to go
            continue
        return result


def _release(holder: str, name: str | None = None) -> None:
    """Drop ``name`` from ``holder`` (with None, drop nothing), then stop the holder if it is left empty.

    A holder that stores nothing closes itself and is killed here, so a name moved away,
    an unpublished name or a first model that could not be built leaves no idle process.
    """
    handle = _holder_handle(holder)
    if handle is None:
        return
    with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
        closing = handle.close_if_empty.remote() if name is None else handle.release.remote(name)
        if ray.get(closing, timeout=_CALL_TIMEOUT_S):
            ray.kill(handle, no_restart=True)


@contextlib.contextmanager
def _calling_holder(name: str, holder: str) -> Iterator[None]:
    """Around a call that publishes ``name`` to ``holder``: a dead holder says so, a failure leaves none idle.

    Raises:
        ModelNotPublishedError: the holder actor died during the call.
    """
    try:
        yield
    except ray.exceptions.RayActorError as exc:
        raise _holder_gone(name, holder, exc) from exc
    except BaseException:
        _release(holder)  # a bad model or a failing loader leaves no empty holder behind
        raise


def _published_summary() -> str:
    models = list_published()
    if not models:
        return "No model is published at present."
    return "Published models: " + "; ".join(str(m) for m in models) + "."


def _unknown(name: str) -> ModelNotPublishedError:
    return ModelNotPublishedError(
        f"No model is published under the name {name!r}. {_published_summary()} Publish it "
        f"first with publish({name!r}, model_or_loader), or use get_or_publish({name!r}, loader)."
    )


def _holder_gone(name: str, holder: str, cause: BaseException | None = None) -> ModelNotPublishedError:
    detail = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return ModelNotPublishedError(
        f"The published model {name!r} is no longer available: its holder actor "
        f"({_actor_name(holder)!r}, namespace {NAMESPACE!r}) died, e.g. killed or lost with its "
        f"node, and the stored weights went with it{detail}. Models already loaded keep "
        f"working. Publish it again with publish({name!r}, model_or_loader), or call "
        f"get_or_publish({name!r}, loader), which recreates the holder."
    )


def _is_loader(obj: Any, model_attr_names: Iterable[str] | None) -> bool:
    if isinstance(obj, ModelSource):
        return True  # read by the holder's task, on its node
    if find_backend(obj) is not None or model_attr_names is not None:
        return False
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return True
    if getattr(obj, "__dict__", None) is not None and any(not attr.startswith("_") for attr in find_models(obj)):
        return False  # a pipeline object that happens to be callable (models in private attributes do not count)
    return callable(obj)


def _holder_for(name: str, holder: str | None) -> str:
    """The holder to publish ``name`` to: the one asked for, else where it is now, else the default."""
    if holder is not None:
        _check_name(holder, "holder")
        return holder
    known = _holder.kv_get(name)
    return str(known["holder"]) if known else DEFAULT_HOLDER


def _moved(name: str, old: dict[str, Any] | None, new_holder: str) -> None:
    """After ``name`` moved to ``new_holder``, drop it from the holder it was in."""
    if old is not None and old.get("holder") != new_holder:
        _release(str(old["holder"]), name)


def publish(
    name: str,
    model_or_loader: Any,
    *,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool = False,
    writable: bool = False,
    prefault: bool = False,
    holder: str | None = None,
    holder_options: dict[str, Any] | None = None,
) -> PublishedModel:
    """Store a model (or pipeline) under ``name``, owned by a detached holder actor.

    The weights outlive the calling process: a deploy script can publish and exit, and
    replicas started later still :func:`load_published` the model. Publishing a name
    that exists replaces it (a new version); workers that loaded the old version keep
    it until they drop it, then Ray frees it.

    Example::

        publish("encoder", model)                              # the caller builds the model
        publish("encoder", lambda: build_encoder("ckpt.pt"))   # built in a task, never here

    Args:
        name: cluster-wide name (any non-empty string).
        model_or_loader: an ``nn.Module`` (or any object a backend handles), a pipeline
            whose attributes are models, a zero-argument callable that returns one
            (a function, a class, a callable object without model attributes), or a
            :class:`~ray_zerocopy_core.checkpoint.Checkpoint`. A loader or a checkpoint
            is read in a Ray task the holder actor starts, so this process never holds the
            model; a checkpoint's bytes go from its files (on the holder's node) straight
            into the object store, with no transient second copy.
        model_attr_names: pipeline attributes to share; found automatically if None.
        device, use_fast_load, writable, prefault: the defaults of
            :func:`load_published` for this model (as for ``ActorWrapper``).
        holder: which holder actor owns it; None keeps the name's current holder, or
            :data:`DEFAULT_HOLDER` for a new name. Models in one holder share its
            process; a holder of its own isolates a model (and costs one process).
        holder_options: extra Ray actor options for the holder if this call creates it
            (e.g. ``resources`` or a ``scheduling_strategy``); by default it takes no CPU.

    Returns:
        The :class:`PublishedModel` now stored under ``name``.
    """
    _check_name(name)
    _ensure_ray()
    names = list(model_attr_names) if model_attr_names is not None else None
    options = LoadOptions().merged(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
    previous = _holder.kv_get(name)
    target = _holder_for(name, holder)
    with _calling_holder(name, target):
        if _is_loader(model_or_loader, names):
            job = _job(model_or_loader, names)
            info = _call_holder(target, holder_options, "build", name, job, options.as_dict(), False)
        else:
            shared = SharedPipeline.share(model_or_loader, names)
            meta = _meta(shared, _backend_names(model_or_loader, names))
            info = _call_holder(target, holder_options, "install", name, meta, shared.refs, options.as_dict())
            shared.release()  # the holder has its own copy now: free ours
    _moved(name, previous, target)
    return PublishedModel(**info)


def _job(loader: Callable[[], Any] | ModelSource, model_attr_names: list[str] | None) -> bytes:
    """The loader as the holder's build task runs it, pickled here (the holder never unpickles it)."""
    try:
        return bytes(cloudpickle.dumps(functools.partial(_build_stream, loader, model_attr_names)))
    except Exception as exc:
        raise InvalidLoaderError(
            f"The loader {loader!r} cannot be pickled ({type(exc).__name__}: {exc}). It runs in a "
            "Ray task started by the holder actor, so it and everything it uses must be picklable: "
            "use a module-level function or class, and open files or connections inside it."
        ) from exc


def get_or_publish(
    name: str,
    loader: Callable[[], Any] | ModelSource,
    *,
    model_attr_names: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    use_fast_load: bool | None = None,
    writable: bool | None = None,
    prefault: bool | None = None,
    holder: str | None = None,
    holder_options: dict[str, Any] | None = None,
) -> Any:
    """Load the model published as ``name``, publishing it with ``loader`` first if needed.

    Safe when many processes call it at once (say, every replica's constructor): the
    holder actor is created once (a Ray named actor, ``get_if_exists``), a lock per
    name inside it lets ``loader`` run once, and one copy is stored; every caller then
    gets a zero-copy load. If the holder had died, this recreates it and runs
    ``loader`` again. An existing model is returned as is, whatever ``loader`` builds.

    Example::

        class Replica:
            def __init__(self):
                self.model = get_or_publish("resnet50", lambda: torchvision.models.resnet50(weights="DEFAULT"))

    Args:
        name: cluster-wide name.
        loader: zero-argument callable that returns the model (or pipeline), or a
            :class:`~ray_zerocopy_core.checkpoint.Checkpoint`; it runs (is read) in a Ray
            task the holder actor starts, so it and what it uses must be picklable.
        model_attr_names: pipeline attributes to share; found automatically if None.
        device, use_fast_load, writable, prefault: how this caller's copy is loaded (as
            ``wrapper.load()``); when this call publishes, they also become the model's
            defaults. None keeps the published default.
        holder, holder_options: as for :func:`publish`.

    Returns:
        The ready model or pipeline.
    """
    _check_name(name)
    if not (callable(loader) or isinstance(loader, ModelSource)):
        raise InvalidLoaderError(
            f"get_or_publish needs a zero-argument callable that builds the model, got "
            f"{type(loader).__qualname__}. To publish a model you already have, use publish()."
        )
    _ensure_ray()
    names = list(model_attr_names) if model_attr_names is not None else None
    defaults = LoadOptions().merged(device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault)
    job = _job(loader, names)
    previous = _holder.kv_get(name)
    target = _holder_for(name, holder)
    for attempt in range(3):
        with _calling_holder(name, target):  # if the loader fails, callers queued behind retry with a new holder
            _call_holder(target, holder_options, "build", name, job, defaults.as_dict(), True)
            _moved(name, previous, target)
        try:
            return load_published(
                name, device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault
            )
        except ModelNotPublishedError:
            if attempt == 2:
                raise  # unpublished or killed again each time, right after it was built
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
    :func:`publish`. Each call loads anew (milliseconds); keep what it returns.

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
    known = _holder.kv_get(name)
    if known is None:
        raise _unknown(name)
    holder = str(known["holder"])
    handle = _holder_handle(holder)
    if handle is None:
        raise _holder_gone(name, holder)
    try:
        record: dict[str, Any] | None = ray.get(handle.record.remote(name))
    except ray.exceptions.RayActorError as exc:
        raise _holder_gone(name, holder, exc) from exc
    if record is None:  # the holder was recreated since (or the name was just unpublished)
        if _holder.kv_get(name) is None:
            raise _unknown(name)
        raise _holder_gone(name, holder)
    shared = SharedPipeline(record["pipeline"], dict(record["refs"]), dict(record["nbytes"]))
    stored = record["options"]
    options = LoadOptions(**stored).merged(
        device=device, use_fast_load=use_fast_load, writable=writable, prefault=prefault
    )
    try:
        return shared.load(options)
    except WeightsUnavailableError as exc:
        raise _holder_gone(name, holder, exc) from exc


def list_published() -> list[PublishedModel]:
    """Every model published in the cluster now, sorted by name (sizes, backends, versions).

    Names whose holder died are left out (loading one says so).

    Example::

        for model in list_published():
            print(model.name, model.version, model.nbytes, model.backends)
    """
    _ensure_ray()
    holders = set()
    for name in _holder.kv_names():
        known = _holder.kv_get(name)
        if known is not None:
            holders.add(str(known["holder"]))
    found: list[PublishedModel] = []
    for holder in sorted(holders):
        handle = _holder_handle(holder)
        if handle is None:
            continue
        with contextlib.suppress(ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            found.extend(PublishedModel(**info) for info in ray.get(handle.infos.remote(), timeout=_CALL_TIMEOUT_S))
    return sorted(found, key=lambda m: m.name)


def unpublish(name: str, *, missing_ok: bool = False) -> bool:
    """Remove the model published as ``name``.

    The object-store memory is freed once every worker that loaded the model has
    dropped it (their loads keep working until then). New loads of ``name`` raise
    :class:`~ray_zerocopy_core.errors.ModelNotPublishedError`. A holder actor left with
    no model is stopped.

    Returns:
        True if ``name`` was published (or its holder had died), False if nothing was
        and ``missing_ok`` is set.

    Raises:
        ModelNotPublishedError: nothing is published under ``name`` and ``missing_ok``
            is False.
    """
    _check_name(name)
    _ensure_ray()
    known = _holder.kv_get(name)
    if known is None:
        if missing_ok:
            return False
        raise _unknown(name)
    _release(str(known["holder"]), name)
    _holder.kv_delete(name)
    return True


def holder_private_memory(holder: str = DEFAULT_HOLDER) -> int:
    """Private memory (bytes) of a holder actor's process: shows it keeps no weights.

    The stored weights are shared memory and do not count; after :func:`publish` with a
    loader, this stays far below the model's size.
    """
    _ensure_ray()
    handle = _holder_handle(holder)
    if handle is None:
        raise ModelNotPublishedError(f"No holder actor {holder!r} is running (nothing was published to it).")
    return int(ray.get(handle.private_memory.remote(), timeout=_CALL_TIMEOUT_S))


__all__ = [
    "DEFAULT_HOLDER",
    "NAMESPACE",
    "PublishedModel",
    "get_or_publish",
    "holder_private_memory",
    "list_published",
    "load_published",
    "publish",
    "unpublish",
]
