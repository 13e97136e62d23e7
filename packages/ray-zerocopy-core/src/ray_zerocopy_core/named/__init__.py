"""Named shared models: publish a model under a cluster-wide name, load it by name on any node.

A wrapper (:class:`~ray_zerocopy_core.wrappers.ActorWrapper`) belongs to the process
that created it: its weights live while that process does, which suits a batch job. A
long-lived service (Ray Serve replicas that come and go, several applications using
one model) needs weights that outlive the script that deployed them: :func:`publish`
stores a model under a **name**, owned by holder actors that outlive the caller, and
:func:`load_published` returns the ready model in any worker or driver of the cluster,
zero-copy and write-protected, like ``wrapper.load()``. Each node that loads the model
holds its own copy, owned by a holder on that node, so losing a node loses only its
copy; :func:`replicate` places copies ahead of time. The guide (docs/guide/named-models.md
and docs/guide/cluster.md) walks through how it works.

Example::

    from ray_zerocopy import get_or_publish, load_published, publish

    publish("classifier", model)                 # a deploy script; it may exit now
    model = load_published("classifier")         # any replica, actor, task or driver

    # or, in each replica: the first caller builds it (once), the others load it
    model = get_or_publish("classifier", lambda: torch.load("classifier.pt", weights_only=False))
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import ray
from ray import cloudpickle

from ray_zerocopy_core import cluster
from ray_zerocopy_core.cluster.directory import NAMESPACE, holder_name
from ray_zerocopy_core.errors import (
    InvalidLoaderError,
    InvalidOptionError,
    ModelNotPublishedError,
    WeightsLostError,
)
from ray_zerocopy_core.named.client import DEFAULT_HOLDER, DirectoryClient
from ray_zerocopy_core.named.directory import kv_get, kv_names
from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.pipeline import BARE_MODEL, SharedPipeline, find_models, pipeline_models, stream_stored
from ray_zerocopy_core.plugin import ModelSource
from ray_zerocopy_core.process_memory import trim_heap
from ray_zerocopy_core.registry import find_backend

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ray_zerocopy_core.options import LoadOverrides

#: How many times get_or_publish builds a model that is lost again right after each build.
BUILDS = 3

#: How copies for other nodes are made: ``"peers"`` (pulled from nodes that hold one) or
#: ``"files"`` (each node reads the checkpoint itself: the path must be readable there).
CopiesFrom = Literal["peers", "files"]


@dataclass(frozen=True)
class PublishedModel:
    """What is published under one name (returned by :func:`publish` and :func:`list_published`).

    Attributes:
        name: the cluster-wide name.
        version: 1 for the first publish of the name, one more on every republish.
        nbytes: weight bytes of one copy, all models of the pipeline together.
        backends: ``(attribute, backend)`` for each model of the pipeline (``(("", "nn"),)``
            for a bare eager model).
        holder: the holder group that owns it (``"default"`` unless chosen).
        built_by: ``"caller"`` (a model was given) or ``"loader"`` (its loader built it, in
            a task a holder started).
        published_at: when this version was stored (seconds since the epoch).
        nodes: the nodes that held a copy when this was read.
    """

    name: str
    version: int
    nbytes: int
    backends: tuple[tuple[str, str], ...] = ()
    holder: str = DEFAULT_HOLDER
    built_by: str = "caller"
    published_at: float = 0.0
    nodes: tuple[str, ...] = ()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> PublishedModel:
        """The public view of a name's record."""
        return cls(
            name=record["name"],
            version=int(record["version"]),
            nbytes=sum(record["nbytes"].values()),
            backends=tuple(sorted(record["backends"].items())),
            holder=record["group"],
            built_by=record["built_by"],
            published_at=float(record["published_at"]),
            nodes=tuple(record["nodes"]),
        )

    def __str__(self) -> str:
        kinds = ", ".join(sorted({backend for _, backend in self.backends})) or "?"
        return f"{self.name!r} (v{self.version}, {self.nbytes / 1024**2:.1f} MiB, {kinds})"


def _ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()


def _check_name(name: str, what: str = "A published model's name") -> None:
    if not isinstance(name, str) or not name.strip():
        raise InvalidOptionError(f"{what} must be a non-empty string, got {name!r}.")


def _check_copies_from(copies_from: str) -> None:
    if copies_from not in ("peers", "files"):
        raise InvalidOptionError(f"copies_from must be 'peers' or 'files', got {copies_from!r}.")


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


def _copies_gone(name: str, record: dict[str, Any], cause: BaseException) -> ModelNotPublishedError:
    nodes = ", ".join(record["nodes"]) or "none"
    return ModelNotPublishedError(
        f"The published model {name!r} (v{record['version']}) is no longer available: every node that held "
        f"a copy died or lost it (copies were on nodes {nodes}; holder group {record['group']!r}, namespace "
        f"{NAMESPACE!r}). Models already loaded keep working. Publish it again with publish({name!r}, "
        f"model_or_loader), or call get_or_publish({name!r}, loader), which builds it again. ({cause})"
    )


def _is_loader(obj: Any, model_attr_names: Iterable[str] | None) -> bool:
    if isinstance(obj, ModelSource):
        return True  # read by a holder's task, on its node
    if find_backend(obj) is not None or model_attr_names is not None:
        return False
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return True
    if getattr(obj, "__dict__", None) is not None and any(not attr.startswith("_") for attr in find_models(obj)):
        return False  # a pipeline object that happens to be callable (models in private attributes do not count)
    return callable(obj)


def _build(loader: Callable[[], Any] | ModelSource, model_attr_names: list[str] | None) -> Iterator[Any]:
    """Runs in a holder's task: build the model (or open the source) and stream its stored form."""
    obj = loader if isinstance(loader, ModelSource) else loader()
    try:
        yield from stream_stored(obj, model_attr_names)
    finally:
        del obj
        trim_heap()


def _job(loader: Callable[[], Any] | ModelSource, model_attr_names: list[str] | None) -> bytes:
    """The loader as a holder's build task runs it, pickled here (holders never unpickle it)."""
    try:
        return bytes(cloudpickle.dumps(functools.partial(_build, loader, model_attr_names)))
    except Exception as exc:
        raise InvalidLoaderError(
            f"The loader {loader!r} cannot be pickled ({type(exc).__name__}: {exc}). It runs in a "
            "Ray task started by a holder actor, so it and everything it uses must be picklable: "
            "use a module-level function or class, and open files or connections inside it."
        ) from exc


def _group_for(name: str, holder: str | None) -> str:
    """The holder group to publish ``name`` to: the one asked for, else where it is now, else the default."""
    if holder is not None:
        _check_name(holder, "holder")
        return holder
    known = kv_get(name)
    return str(known["group"]) if known else DEFAULT_HOLDER


def _after_publish(name: str, previous: dict[str, Any] | None, group: str) -> None:
    """``name`` is now in ``group``: drop its copies from the group it was in before, if another."""
    if previous is not None and previous["group"] != group:
        old = DirectoryClient(str(previous["group"]))
        old.drop_moved(name, list(previous["keys"].values()), list(previous["nodes"]))


def publish(
    name: str,
    model_or_loader: Any,
    *,
    model_attr_names: Iterable[str] | None = None,
    holder: str | None = None,
    holder_options: dict[str, Any] | None = None,
    nodes: str | Iterable[str] | None = None,
    copies_from: CopiesFrom = "peers",
    **options: Unpack[LoadOverrides],
) -> PublishedModel:
    """Store a model (or pipeline) under ``name``, owned by holder actors that outlive this process.

    The weights outlive the calling process: a deploy script can publish and exit, and
    replicas started later still :func:`load_published` the model. Publishing a name
    that exists replaces it (a new version); workers that loaded the old version keep
    it until they drop it, then Ray frees it.

    Example::

        publish("encoder", model)                              # the caller builds the model
        publish("encoder", lambda: build_encoder("ckpt.pt"))   # built in a task, never here
        publish("llama", Checkpoint("llama-dir/", "AutoModelForCausalLM"), nodes="all")

    Args:
        name: cluster-wide name (any non-empty string).
        model_or_loader: an ``nn.Module`` (or any object a backend handles), a pipeline
            whose attributes are models, a zero-argument callable that returns one
            (a function, a class, a callable object without model attributes), or a
            :class:`~ray_zerocopy_core.checkpoint.Checkpoint`. A loader or a checkpoint
            is read in a Ray task on the holder group's node, so this process never
            holds the model; a checkpoint's bytes go from its files straight into the
            object store. A model given is stored here, then copied into a holder on this node.
        model_attr_names: pipeline attributes to share; found automatically if None.
        holder: the holder group that owns it; None keeps the name's current group, or
            ``"default"`` for a new name. A group of its own isolates a model.
        holder_options: extra Ray actor options for the group's actors if this call
            creates them (e.g. ``resources``); by default they take no CPU.
        nodes: also place a copy on these nodes now and wait for them (see
            :func:`replicate`): ``"all"``, or node ids. None: other nodes copy on first load.
        copies_from: how those copies are made (see :func:`replicate`). With ``"files"``
            and a loader or checkpoint, each of ``nodes`` (and only those) reads it itself.
        device, use_fast_load, writable, prefault: the defaults of
            :func:`load_published` for this model (as for ``ActorWrapper``).

    Returns:
        The :class:`PublishedModel` now stored under ``name``.
    """
    _check_name(name)
    _check_copies_from(copies_from)
    _ensure_ray()
    names = list(model_attr_names) if model_attr_names is not None else None
    defaults = LoadOptions().merged(**options).as_dict()
    previous = kv_get(name)
    group = _group_for(name, holder)
    client = DirectoryClient(group, holder_options)
    read_here = copies_from == "files" and nodes is not None
    try:
        if _is_loader(model_or_loader, names):
            targets = cluster.target_nodes(nodes) if read_here and nodes is not None else None
            record = client.build(name, _job(model_or_loader, names), defaults, False, targets)
        else:
            shared = SharedPipeline.share(model_or_loader, names, copies=False)
            heads = {attr: [ref] for attr, ref in shared.refs.items()}
            backends = {attr: backend.name for attr, (_, backend) in pipeline_models(model_or_loader, names).items()}
            extra = {"pipeline": shared.pickled_pipeline(), "nbytes": dict(shared.nbytes), "backends": backends}
            record = client.install(name, cluster.this_node(), heads, extra, defaults)
            shared.release()  # the holder has its own copy now: free ours
    except BaseException:
        client.close_if_empty()  # a bad model or a failing loader leaves no empty holder behind
        raise
    _after_publish(name, previous, group)
    if nodes is not None and not (read_here and record["built_by"] == "loader"):
        replicate(name, nodes, copies_from=copies_from)
        record = kv_get(name) or record
    return PublishedModel.from_record(record)


def replicate(
    name: str,
    nodes: str | Iterable[str] = "all",
    *,
    copies_from: CopiesFrom = "peers",
    progress: cluster.Progress | None = None,
) -> list[str]:
    """Place a copy of the model published as ``name`` on ``nodes`` now, and wait for every one.

    Loads on those nodes then never wait for a transfer. With ``copies_from="peers"``
    (the default, right for most clusters) a node pulls the chunks from nodes that hold
    or are receiving them, and forwards what it has while receiving the rest, so the
    copies reach many nodes in about the time one transfer takes. With ``"files"``, each
    node reads the checkpoint it was published from itself (a path every node can read:
    shared storage, the same directory on every node, or cloud storage), and no weight
    crosses the network; only for a name published from a checkpoint or a loader.

    Example::

        replicate("llama", "all", progress=lambda node, done, total: print(f"{done}/{total} nodes"))

    Args:
        name: a published name.
        nodes: ``"all"`` (every alive node) or node ids (``ray.nodes()``'s ``NodeID``).
        copies_from: ``"peers"`` or ``"files"``, as above.
        progress: called as each node's copy completes: ``progress(node_id, done, total)``;
            each also goes to the ``ray_zerocopy_core.cluster`` logger.

    Returns:
        The node ids that now hold a copy.

    Raises:
        ModelNotPublishedError: nothing is published under ``name``, or every copy is gone.
    """
    _check_name(name)
    _check_copies_from(copies_from)
    _ensure_ray()
    record = kv_get(name)
    if record is None:
        raise _unknown(name)
    targets = cluster.target_nodes(nodes)
    client = DirectoryClient(str(record["group"]))
    version = int(record["version"])
    if copies_from == "files" and record.get("job") is None:
        raise InvalidOptionError(
            f"{name!r} was published from a model object, so there are no files for other nodes to read: "
            "use copies_from='peers', or publish it from a Checkpoint or a loader."
        )
    try:
        if copies_from == "files":
            futures = client.build_on(name, targets)
            labels = [(node, "") for node, future in zip(targets, futures) if future is not None]
            done = cluster.wait_for_copies(
                [future for future in futures if future is not None], labels, targets, progress, f"{name!r}"
            )
        else:
            keys = list(record["keys"].values())
            labels = [(node, key) for node in targets for key in keys]
            futures = [client.copy_on(key, node, list(record["nodes"])) for node, key in labels]
            done = cluster.wait_for_copies(futures, labels, targets, progress, f"{name!r}")
    except WeightsLostError as exc:
        raise _copies_gone(name, record, exc) from exc
    for node in done:
        client.note_copy(name, version, node)
    return done


def get_or_publish(
    name: str,
    loader: Callable[[], Any] | ModelSource,
    *,
    model_attr_names: Iterable[str] | None = None,
    holder: str | None = None,
    holder_options: dict[str, Any] | None = None,
    **options: Unpack[LoadOverrides],
) -> Any:
    """Load the model published as ``name``, publishing it with ``loader`` first if needed.

    Safe when many processes call it at once (say, every replica's constructor): the
    holder group's directory is created once (a Ray named actor, ``get_if_exists``), a
    lock per name inside it lets ``loader`` run once, and one copy is stored per node;
    every caller then gets a zero-copy load. If every copy had been lost, ``loader`` runs
    again. An existing model is returned as is, whatever ``loader`` builds.

    Example::

        class Replica:
            def __init__(self):
                self.model = get_or_publish("resnet50", lambda: torchvision.models.resnet50(weights="DEFAULT"))

    Args:
        name: cluster-wide name.
        loader: zero-argument callable that returns the model (or pipeline), or a
            :class:`~ray_zerocopy_core.checkpoint.Checkpoint`; it runs (is read) in a Ray
            task a holder starts, so it and what it uses must be picklable.
        model_attr_names: pipeline attributes to share; found automatically if None.
        holder, holder_options: as for :func:`publish`.
        device, use_fast_load, writable, prefault: how this caller's copy is loaded (as
            ``wrapper.load()``); when this call publishes, they also become the model's
            defaults. None keeps the published default.

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
    defaults = LoadOptions().merged(**options).as_dict()
    job = _job(loader, names)
    previous = kv_get(name)
    group = _group_for(name, holder)
    client = DirectoryClient(group, holder_options)
    builds_left = BUILDS
    while True:
        try:
            client.build(name, job, defaults, True)
        except BaseException:
            client.close_if_empty()
            raise
        _after_publish(name, previous, group)
        try:
            return load_published(name, **options)
        except ModelNotPublishedError:
            builds_left -= 1
            if builds_left == 0:
                raise  # unpublished or lost again each time, right after it was built


def load_published(name: str, **options: Unpack[LoadOverrides]) -> Any:
    """Return the ready model published as ``name``, in this process.

    On the CPU (the default) its tensors alias this node's copy in the object store and
    are read-only, exactly as ``wrapper.load()``. A node without a copy gets one first,
    from nodes that hold it (concurrent loaders on a node wait for that one copy).
    Options left as None keep the defaults given to :func:`publish`. Each call loads anew
    (milliseconds); keep what it returns.

    Example::

        @serve.deployment
        class Classifier:
            def __init__(self):
                self.model = load_published("classifier")

    Raises:
        ModelNotPublishedError: nothing is published under ``name`` (the message lists
            what is), or every copy was lost (the message says where they were).
    """
    _check_name(name)
    _ensure_ray()
    record = kv_get(name)
    if record is None:
        raise _unknown(name)
    node = cluster.this_node()
    keys = record["keys"]
    heads = _heads_here(record, node)
    if heads is None:
        client = DirectoryClient(str(record["group"]))
        try:
            futures = {attr: client.copy_on(key, node, list(record["nodes"])) for attr, key in keys.items()}
            heads = {attr: cluster.resolve(future, repr(name)) for attr, future in futures.items()}
        except WeightsLostError as exc:
            raise _copies_gone(name, record, exc) from exc
        if node not in record["nodes"]:
            client.note_copy(name, int(record["version"]), node)
    shared = SharedPipeline(record["pipeline"], heads, dict(record["nbytes"]))
    merged = LoadOptions(**record["options"]).merged(**options)
    try:
        return shared.load(merged)
    except WeightsLostError as exc:
        raise _copies_gone(name, record, exc) from exc


def _heads_here(record: dict[str, Any], node: str) -> dict[str, Any] | None:
    """This node's heads of ``record``'s models, if this node's holder has them all (no directory involved)."""
    if node not in record["nodes"]:
        return None
    holder = _node_holder(str(record["group"]), node)
    if holder is None:
        return None
    try:
        heads = ray.get([holder.head.remote(key) for key in record["keys"].values()])
    except ray.exceptions.RayActorError:
        _node_holder.cache_clear()
        return None
    if any(head is None for head in heads):
        return None
    return dict(zip(record["keys"], heads))


@functools.lru_cache(maxsize=64)
def _node_holder(group: str, node: str) -> Any:
    try:
        return ray.get_actor(holder_name(group, node), namespace=NAMESPACE)
    except ValueError:
        return None


def list_published() -> list[PublishedModel]:
    """Every model published in the cluster now, sorted by name (sizes, backends, versions, nodes).

    Example::

        for model in list_published():
            print(model.name, model.version, model.nbytes, model.nodes)
    """
    _ensure_ray()
    found = [kv_get(name) for name in kv_names()]
    return sorted((PublishedModel.from_record(r) for r in found if r is not None), key=lambda m: m.name)


def unpublish(name: str, *, missing_ok: bool = False) -> bool:
    """Remove the model published as ``name``, on every node.

    The object-store memory is freed once every worker that loaded the model has
    dropped it (their loads keep working until then). New loads of ``name`` raise
    :class:`~ray_zerocopy_core.errors.ModelNotPublishedError`. Holder actors left with
    no model are stopped.

    Returns:
        True if ``name`` was published, False if nothing was and ``missing_ok`` is set.

    Raises:
        ModelNotPublishedError: nothing is published under ``name`` and ``missing_ok``
            is False.
    """
    _check_name(name)
    _ensure_ray()
    known = kv_get(name)
    if known is None:
        if missing_ok:
            return False
        raise _unknown(name)
    DirectoryClient(str(known["group"])).unpublish(name)
    _node_holder.cache_clear()
    return True


def holder_private_memory(holder: str = DEFAULT_HOLDER, node: str | None = None) -> int:
    """Private memory (bytes) of the holder group's actor on ``node`` (default: this node): it keeps no weights.

    The stored weights are shared memory and do not count; after :func:`publish` with a
    loader, this stays far below the model's size.
    """
    _ensure_ray()
    return DirectoryClient(holder).holder_memory(node or cluster.this_node())


__all__ = [
    "BARE_MODEL",
    "DEFAULT_HOLDER",
    "NAMESPACE",
    "PublishedModel",
    "get_or_publish",
    "holder_private_memory",
    "list_published",
    "load_published",
    "publish",
    "replicate",
    "unpublish",
]
