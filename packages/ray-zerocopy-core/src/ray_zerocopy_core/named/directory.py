"""The directory of a holder group of named models: versions, records, and one build at a time per name.

A :class:`NamedDirectory` is a detached actor (``holder:<group>`` in :data:`NAMESPACE`)
that extends the copy directory of :mod:`ray_zerocopy_core.cluster.directory`: its node
holders are detached and named, so copies outlive both the publishing script and this
actor. It adds what names need: a lock per name (so a loader runs once however many
callers race), versions, and the record of each name in Ray's GCS key-value store
(:func:`kv_put`): the model's keys, the nodes holding a copy, the pickled pipeline and
the default load options. The record is what a load reads first; it survives this
actor, whose next incarnation finds the copies again through it.

Torch-free, like the holders (pickled by value).
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import ray
from ray import cloudpickle

from ray_zerocopy_core import process_memory
from ray_zerocopy_core.cluster import directory as copy_directory
from ray_zerocopy_core.cluster import holder as holders
from ray_zerocopy_core.cluster.directory import NAMESPACE, CopyDirectory

#: What a directory answers instead of doing the work once its last name is gone (the caller retries).
CLOSING = "__ray_zerocopy_directory_closing__"
_RECORD = "model:"


def kv_put(name: str, record: dict[str, Any]) -> None:
    """Store the record of ``name``."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(_RECORD + name, pickle.dumps(record), overwrite=True, namespace=NAMESPACE)


def kv_get(name: str) -> dict[str, Any] | None:
    """The record of ``name``, or None if it is not published."""
    from ray.experimental import internal_kv

    value = internal_kv._internal_kv_get(_RECORD + name, namespace=NAMESPACE)
    return None if value is None else dict(pickle.loads(value))


def kv_delete(name: str) -> None:
    """Forget the record of ``name``."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_del(_RECORD + name, namespace=NAMESPACE)


def kv_names() -> list[str]:
    """Every published name, sorted."""
    from ray.experimental import internal_kv

    keys = internal_kv._internal_kv_list(_RECORD, namespace=NAMESPACE)
    names = (k.decode() if isinstance(k, bytes) else str(k) for k in keys)
    return sorted(name[len(_RECORD) :] for name in names)


def model_keys(name: str, version: int, attrs: list[str]) -> dict[str, str]:
    """The key of each attribute's stored model for ``version`` of ``name``."""
    return {attr: f"{name}@{version}/{attr}" for attr in attrs}


class NamedDirectory(CopyDirectory):
    """The detached directory of one holder group of named models (see the module doc). Methods run in threads."""

    def __init__(self, group: str, holder_options: dict[str, Any] | None = None) -> None:
        super().__init__(group, detached=True, holder_options=holder_options)
        self._locks: dict[str, threading.Lock] = {}
        self._versions: dict[str, int] = {}
        self._guard = threading.Lock()
        self._busy = 0
        self._closing = False

    @contextlib.contextmanager
    def _working_on(self, name: str) -> Iterator[bool]:
        """Hold ``name``'s lock, counted as busy; yields False (holding nothing) once closing."""
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

    def _next_version(self, name: str) -> int:
        known = kv_get(name)
        version = max(self._versions.get(name, 0), int(known["version"]) if known else 0) + 1
        self._versions[name] = version
        return version

    def _install(
        self,
        name: str,
        version: int,
        node: str,
        keys: dict[str, str],
        extra: dict[str, Any],
        options: dict[str, Any],
        built_by: str,
        job: bytes | None,
    ) -> dict[str, Any]:
        """Record ``version`` of ``name`` as held on ``node``; drop the previous version everywhere."""
        previous = kv_get(name)
        record = {
            "name": name,
            "group": self._group,
            "version": version,
            "keys": dict(keys),
            "nodes": [node],
            "pipeline": extra["pipeline"],
            "nbytes": dict(extra["nbytes"]),
            "backends": dict(extra["backends"]),
            "options": dict(options),
            "built_by": built_by,
            "published_at": time.time(),
            "job": job,
        }
        kv_put(name, record)
        if previous is not None:  # workers that loaded the old version keep it until they drop it
            self.release(list(previous["keys"].values()), list(previous["nodes"]))
            if previous["group"] != self._group:
                record["moved_from"] = previous["group"]
        return record

    def install(
        self, name: str, node: str, heads: dict[str, list[Any]], extra: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any] | str:
        """Own a copy of each model the caller stored on ``node`` (copied store to store); record the name."""
        with self._working_on(name) as working:
            if not working:
                return CLOSING
            version = self._next_version(name)
            keys = model_keys(name, version, list(heads))
            ray.get([self.adopt(keys[attr], node, heads[attr], True) for attr in heads])
            return self._install(name, version, node, keys, extra, options, "caller", None)

    def build_named(
        self, name: str, job: bytes, options: dict[str, Any], only_if_missing: bool, nodes: list[str] | None = None
    ) -> dict[str, Any] | str:
        """Run the loader (``job``) in a task on each of ``nodes`` (default: this directory's); record what they store.

        Each node builds its own copy (a checkpoint is read from that node's files). With
        ``only_if_missing``, a name some node still holds is left as it is.
        """
        with self._working_on(name) as working:
            if not working:
                return CLOSING
            existing = kv_get(name)
            if only_if_missing and existing is not None and self._held(existing):
                return existing
            version = self._next_version(name)
            targets = list(nodes or [self.ready()])
            prefix = f"{name}@{version}/"
            results = ray.get([self.build(prefix, node, job) for node in targets])
            keys = {attr: prefix + attr for attr in results[0]["heads"]}
            for node in targets:
                self.built(list(keys.values()), node)
            record = self._install(name, version, targets[0], keys, results[0]["extra"], options, "loader", job)
            if len(targets) > 1:
                record["nodes"] = targets
                kv_put(name, record)
            return record

    def _held(self, record: dict[str, Any]) -> bool:
        """Whether some node still holds every model of ``record``."""
        for node in record["nodes"]:
            handle = self._holders.get(node) or self._find(node)
            if handle is None:
                continue
            with contextlib.suppress(*holders.PEER_GONE):
                heads = ray.get([handle.head.remote(key) for key in record["keys"].values()], timeout=60)
                if all(head is not None for head in heads):
                    return True
        return False

    def build_on(self, name: str, nodes: list[str]) -> list[Any]:
        """Each of ``nodes`` builds its own copy of ``name`` with the loader it was published with (its own files)."""
        record = kv_get(name)
        if record is None or record["job"] is None:
            raise holders.CopyFailed(f"{name!r} was not published from a loader or a checkpoint")
        prefix = f"{name}@{record['version']}/"
        futures: list[Any] = []
        for node in nodes:
            if node in self.nodes(next(iter(record["keys"].values()))):
                futures.append(None)
                continue
            futures.append(self.build(prefix, node, record["job"]))
        return futures

    def note_copy(self, name: str, version: int, node: str) -> None:
        """Record that ``node`` now holds ``version`` of ``name``."""
        with self._working_on(name) as working:
            record = kv_get(name)
            if working and record is not None and record["version"] == version and node not in record["nodes"]:
                record["nodes"].append(node)
                kv_put(name, record)

    def unpublish(self, name: str) -> bool:
        """Drop every node's copy of ``name`` and its record; return True if the directory is now closing."""
        with self._working_on(name):
            record = kv_get(name)
            if record is not None and record["group"] == self._group:
                self.release(list(record["keys"].values()), list(record["nodes"]))
                kv_delete(name)
        return self.close_if_empty()

    def drop_moved(self, name: str, keys: list[str], nodes: list[str]) -> bool:
        """``name`` moved to another group: drop its copies here; return True if now closing."""
        self.release(keys, nodes)
        return self.close_if_empty()

    def records(self) -> list[dict[str, Any]]:
        """The records of this group's names."""
        found = [kv_get(name) for name in kv_names()]
        return [record for record in found if record is not None and record["group"] == self._group]

    def holder_memory(self, node: str) -> int:
        """The private memory of this group's holder on ``node`` (bytes)."""
        return int(ray.get(self.holder(node).private_memory.remote()))

    def close_if_empty(self) -> bool:
        """Close if no name of this group is recorded and nothing is in progress; return whether closing.

        Closing stops the group's node holders too (they hold nothing of it any more).
        """
        with self._guard:
            if not self._closing and self._busy == 0 and not self.records():
                self._closing = True
                self._stop_holders()
            return self._closing

    def _stop_holders(self) -> None:
        prefix = copy_directory.holder_name(self._group, "")
        named = ray.util.list_named_actors(all_namespaces=True)
        for actor in named:
            if actor["namespace"] == NAMESPACE and actor["name"].startswith(prefix):
                with contextlib.suppress(ValueError, *holders.PEER_GONE):
                    ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
        self._holders.clear()


@functools.cache
def remote_named_directory() -> Any:
    """:class:`NamedDirectory` as a Ray actor class, made on first use (importing defines no actor)."""
    for module in (sys.modules[__name__], copy_directory, holders, process_memory):
        cloudpickle.register_pickle_by_value(module)
    return ray.remote(NamedDirectory)
