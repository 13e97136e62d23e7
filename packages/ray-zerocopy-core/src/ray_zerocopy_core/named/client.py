"""The typed client of a holder group's directory: one method per call, and the retries in one place.

:class:`DirectoryClient` finds the group's detached directory (``holder:<group>``) or
creates it, and calls it. A directory that died (killed, or lost with its node) is
created again; one that is closing (its last name was just unpublished) is waited for
and replaced. Errors that mean "the weights are gone" become
:class:`~ray_zerocopy_core.errors.ModelNotPublishedError` here or in the callers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from ray_zerocopy_core.cluster.directory import NAMESPACE
from ray_zerocopy_core.errors import HolderUnavailableError
from ray_zerocopy_core.named.directory import CLOSING, remote_named_directory

#: The holder group models go to unless ``holder=`` names another.
DEFAULT_HOLDER = "default"
#: How long a directory may take to start (it waits for what ``holder_options`` asks).
START_TIMEOUT_S = 300.0
#: How long a call keeps retrying a directory that died or is closing.
RETRY_S = 30.0


def directory_name(group: str) -> str:
    """The actor name of ``group``'s directory."""
    return f"holder:{group}"


def find_directory(group: str) -> Any | None:
    """``group``'s directory if it runs, else None."""
    try:
        return ray.get_actor(directory_name(group), namespace=NAMESPACE)
    except ValueError:
        return None


@dataclass
class DirectoryClient:
    """Calls to one holder group's directory (created on first use, with ``holder_options``)."""

    group: str = DEFAULT_HOLDER
    holder_options: dict[str, Any] | None = None
    _handle: Any = field(default=None, repr=False)

    def _directory(self) -> Any:
        if self._handle is None:
            options = {
                "num_cpus": 0,
                "max_restarts": 0,
                "max_concurrency": 64,
                **(self.holder_options or {}),
                "name": directory_name(self.group),
                "namespace": NAMESPACE,
                "lifetime": "detached",
                "get_if_exists": True,
            }
            handle = remote_named_directory().options(**options).remote(self.group, self.holder_options)
            try:
                ray.get(handle.ready.remote(), timeout=START_TIMEOUT_S)
            except ray.exceptions.GetTimeoutError:
                raise HolderUnavailableError(
                    f"The ray-zerocopy holder actor {directory_name(self.group)!r} did not start within "
                    f"{START_TIMEOUT_S:.0f} s. The cluster may lack what holder_options asks for "
                    f"({self.holder_options or 'nothing beyond the defaults'}); check `ray status`, or pass "
                    "holder_options that some node can satisfy."
                ) from None
            self._handle = handle
        return self._handle

    def _call(self, method: str, *args: Any) -> Any:
        """Call ``method`` on the directory, recreating it if it died and waiting out one that is closing."""
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                result = ray.get(getattr(self._directory(), method).remote(*args))
            except ray.exceptions.RayActorError:
                if time.monotonic() > deadline:
                    raise
                self._handle = None  # it died between lookup and call: make a new one
                time.sleep(0.1)
                continue
            if not (isinstance(result, str) and result == CLOSING):
                return result
            if time.monotonic() > deadline:
                raise HolderUnavailableError(
                    f"The ray-zerocopy holder actor {directory_name(self.group)!r} stayed in its closing state "
                    f"(its last model was unpublished) for {RETRY_S:.0f} s. Something keeps it alive: check "
                    "`ray list actors` for it, or publish to another holder with holder='...'."
                )
            ray.kill(self._directory(), no_restart=True)  # closing: replace it
            self._handle = None
            time.sleep(0.1)

    # --- one method per directory call ------------------------------------------------

    def install(
        self, name: str, node: str, heads: dict[str, list[Any]], extra: dict[str, Any], options: dict[str, Any]
    ) -> dict[str, Any]:
        """The directory takes the models the caller stored on ``node`` (boxed head refs); returns the record."""
        return dict(self._call("install", name, node, heads, extra, options))

    def build(
        self, name: str, job: bytes, options: dict[str, Any], only_if_missing: bool, nodes: list[str] | None = None
    ) -> dict[str, Any]:
        """The directory runs ``job`` on ``nodes`` (default: its own), recording what they store; the record."""
        return dict(self._call("build_named", name, job, options, only_if_missing, nodes))

    def copy_on(self, key: str, node: str, known: list[str]) -> Any:
        """The future of ``node``'s head of ``key`` (a copy from peers started if needed)."""
        return self._call("copy_on", key, node, known)

    def build_on(self, name: str, nodes: list[str]) -> list[Any]:
        """Each of ``nodes`` reads ``name``'s files itself: the futures of their builds (None: had a copy)."""
        return list(self._call("build_on", name, nodes))

    def note_copy(self, name: str, version: int, node: str) -> None:
        """Record that ``node`` holds ``version`` of ``name``."""
        self._call("note_copy", name, version, node)

    def unpublish(self, name: str) -> None:
        """Drop every copy of ``name`` and its record; stop the directory if it is left empty."""
        if self._call("unpublish", name):
            self._stop()

    def drop_moved(self, name: str, keys: list[str], nodes: list[str]) -> None:
        """``name`` moved to another group: drop its copies here; stop the directory if left empty."""
        if self._call("drop_moved", name, keys, nodes):
            self._stop()

    def close_if_empty(self) -> None:
        """Stop the directory if no name of its group is published (after a failed first publish)."""
        handle = find_directory(self.group)
        if handle is None:
            return
        try:
            closing = ray.get(handle.close_if_empty.remote())
        except ray.exceptions.RayActorError:
            return
        if closing:
            self._stop()

    def records(self) -> list[dict[str, Any]]:
        """The records of the group's names ([] if its directory does not run)."""
        if find_directory(self.group) is None:
            return []
        return list(self._call("records"))

    def holder_memory(self, node: str) -> int:
        """The private memory of the group's holder on ``node``."""
        return int(self._call("holder_memory", node))

    def _stop(self) -> None:
        handle = find_directory(self.group)
        if handle is not None:
            ray.kill(handle, no_restart=True)
        self._handle = None
