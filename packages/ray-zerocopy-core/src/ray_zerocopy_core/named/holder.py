"""The holder actor of named models, kept free of torch (private; used by :mod:`.named`).

A holder is a long-lived detached process, so what it imports it keeps: importing torch
would cost it over 100 MiB of private memory for nothing, since it never touches a
model. This module therefore imports only the standard library, Ray and
:mod:`~ray_zerocopy_core.process_memory` (standard library only), and both are pickled
*by value* (``cloudpickle.register_pickle_by_value``): the holder process rebuilds the
class from the pickled code and never imports ``ray_zerocopy_core`` (whose package
``__init__`` imports torch). Models never reach the holder either: the objects it owns
are written by short tasks it submits (their return values are owned by the caller,
i.e. the holder), and it hands out only ObjectRefs, bytes and plain dicts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import cloudpickle
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ray_zerocopy_core import process_memory
from ray_zerocopy_core.process_memory import private_memory_bytes, trim_heap

#: The Ray namespace of the holder actors (and of the GCS key-value records of names).
NAMESPACE = "ray_zerocopy_named"

#: What a holder returns instead of doing the work once its last model is gone.
CLOSING = "__ray_zerocopy_holder_closing__"


def kv_put(name: str, holder: str, version: int) -> None:
    """Record that ``name`` is published, in holder ``holder``, at ``version``."""
    from ray.experimental import internal_kv

    value = json.dumps({"holder": holder, "version": version})
    internal_kv._internal_kv_put(name, value, overwrite=True, namespace=NAMESPACE)


def kv_get(name: str) -> dict[str, Any] | None:
    """The record of ``name`` (``{"holder", "version"}``), or None if it is not published."""
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(name, namespace=NAMESPACE)
    return None if value is None else dict(json.loads(value))


def kv_delete(name: str) -> None:
    """Forget the record of ``name``."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(name, namespace=NAMESPACE)


def kv_names() -> list[str]:
    """Every name with a record, sorted."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list("", namespace=NAMESPACE)
    return sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys)


def run_job(job: bytes) -> Iterator[Any]:
    """Task body: unpickle ``job`` (a zero-argument generator function) here and stream what it yields."""
    yield from cloudpickle.loads(job)()


def copy_objects(refs: list[ray.ObjectRef]) -> Iterator[Any]:
    """Task body: yield each stored object's value, so the caller owns a copy of each."""
    for ref in refs:
        value = ray.get(ref)
        yield value
        del value


class ModelHolder:
    """The detached actor that owns the stored models of the names published to it.

    Methods run in threads; one lock per name makes a name's builds and installs run
    one at a time (so a loader runs once however many callers race), while other names
    proceed. Once its last name is released the holder *closes*: it answers
    :data:`CLOSING` to new work (callers retry with a fresh holder) and is killed.

    A record (what loaders get) is a plain dict: ``pipeline`` (the pickled pipeline,
    or None), ``refs`` (attribute to ObjectRef), ``nbytes``, ``options`` (the default
    load options) and ``info`` (the fields of ``PublishedModel``).
    """

    def __init__(self, holder: str) -> None:
        self._holder = holder
        self._records: dict[str, dict[str, Any]] = {}
        self._versions: dict[str, int] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._busy = 0
        self._closing = False

    def ready(self) -> bool:
        return True

    @contextlib.contextmanager
    def _working_on(self, name: str) -> Iterator[bool]:
        """Hold ``name``'s lock, counted as busy (so the holder does not close meanwhile).

        Yields False, holding nothing, once the holder is closing: the caller answers
        :data:`CLOSING` instead of doing the work.
        """
        with self._guard:
            closing = self._closing
            if not closing:
                self._busy += 1
                lock = self._locks.setdefault(name, threading.Lock())
        if closing:
            yield False
            return
        try:
            with lock:
                yield True
        finally:
            with self._guard:
                self._busy -= 1

    def _install(
        self, name: str, meta: dict[str, Any], refs: dict[str, ray.ObjectRef], options: dict[str, Any], built_by: str
    ) -> dict[str, Any]:
        known = kv_get(name)
        version = max(self._versions.get(name, 0), int(known["version"]) if known else 0) + 1
        self._versions[name] = version
        info = {
            "name": name,
            "version": version,
            "nbytes": sum(meta["nbytes"].values()),
            "backends": dict(meta["backends"]),
            "holder": self._holder,
            "built_by": built_by,
            "published_at": time.time(),
        }
        # Replacing the record drops the refs to the previous version: Ray frees it once
        # the workers that loaded it drop their models.
        self._records[name] = {
            "pipeline": meta["pipeline"],
            "refs": refs,
            "nbytes": dict(meta["nbytes"]),
            "options": dict(options),
            "info": info,
        }
        kv_put(name, self._holder, version)
        return info

    def _own(self, generator: Any, attrs: list[str]) -> dict[str, ray.ObjectRef]:
        """Take one streamed return object per attribute: this actor owns each."""
        return {attr: next(generator) for attr in attrs}

    def install(
        self, name: str, meta: dict[str, Any], refs: dict[str, ray.ObjectRef], options: dict[str, Any]
    ) -> dict[str, Any] | str:
        """Own a copy of each object the caller stored (a task copies them, store to store)."""
        with self._working_on(name) as working:
            if not working:
                return CLOSING
            attrs = list(refs)
            copier: Any = ray.remote(copy_objects).options(num_cpus=0, num_returns="streaming")
            owned = self._own(copier.remote([refs[attr] for attr in attrs]), attrs)
            return self._install(name, meta, owned, options, "caller")

    def build(self, name: str, job: bytes, options: dict[str, Any], only_if_missing: bool) -> dict[str, Any] | str:
        """Run the loader in a task; own what it stores. ``job`` streams the metadata, then each model."""
        with self._working_on(name) as working:
            if not working:
                return CLOSING
            existing = self._records.get(name)
            if only_if_missing and existing is not None:
                return dict(existing["info"])
            try:
                # num_cpus=0: callers waiting here (e.g. replicas in their constructor) may
                # hold every CPU of the cluster. The task runs on this holder's node, so a
                # checkpoint's files are read there (holder_options place the holder).
                here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
                runner: Any = ray.remote(run_job).options(num_cpus=0, num_returns="streaming", scheduling_strategy=here)
                stream = runner.remote(job)
                meta: dict[str, Any] = ray.get(next(stream))
                owned = self._own(stream, list(meta["attrs"]))
                return self._install(name, meta, owned, options, "loader")
            finally:
                trim_heap()

    def record(self, name: str) -> dict[str, Any] | None:
        return self._records.get(name)

    def infos(self) -> list[dict[str, Any]]:
        return [dict(record["info"]) for record in list(self._records.values())]

    def private_memory(self) -> int:
        """This holder's private memory in bytes (the stored weights are not in it)."""
        trim_heap()
        return private_memory_bytes()

    def release(self, name: str) -> bool:
        """Forget ``name`` (dropping its refs); return True if the holder is now closing."""
        with self._guard:
            self._records.pop(name, None)
            known = kv_get(name)
            if known is not None and known.get("holder") == self._holder:
                kv_delete(name)
            return self._close_if_idle()

    def close_if_empty(self) -> bool:
        """Close if nothing is stored or being stored here; return whether closing."""
        with self._guard:
            return self._close_if_idle()

    def _close_if_idle(self) -> bool:
        if not self._records and self._busy == 0:
            self._closing = True
        return self._closing


@functools.cache
def remote_holder_class() -> Any:
    """The holder as a Ray actor class, made on first use (importing this module defines no actor).

    This module and :mod:`~ray_zerocopy_core.process_memory` are then pickled by value, so
    the holder process rebuilds their code from the pickle instead of importing
    ``ray_zerocopy_core`` (and with it torch).
    """
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cloudpickle.register_pickle_by_value(process_memory)
    return ray.remote(ModelHolder)
