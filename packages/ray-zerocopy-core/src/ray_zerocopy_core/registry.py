"""The backend registry: entry points in group ``ray_zerocopy.backends``, found lazily.

Entry points are read once, on first use, and imported only when a backend is needed;
each one loaded is cached. A plugin that fails to import is logged with its
entry-point name and remembered in :func:`broken_backends`; the others keep working.
Backends can also be registered in code with :func:`register_backend`.

One table, :data:`KNOWN_BACKENDS`, lists the backends ray-zerocopy's own distributions
ship: where each lives and the line that installs it, so an object that needs one that
is missing gets an error that says what to install.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from types import MappingProxyType
from typing import Protocol

from ray_zerocopy_core.errors import (
    BackendError,
    BackendNotInstalledError,
    InvalidBackendError,
    InvalidOptionError,
)
from ray_zerocopy_core.plugin import ENTRY_POINT_GROUP, Backend, ModelSource

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class KnownBackend:
    """A backend of ray-zerocopy's own distributions: what it claims and how to install it.

    Attributes:
        name: the backend's name (its entry point's name).
        claims: dotted path of the model type it shares.
        install_hint: the command that installs it (empty for core's own).
    """

    name: str
    claims: str
    install_hint: str = ""

    def claimed_type(self) -> type | None:
        """The claimed class, imported on demand; None if its module is unavailable."""
        module_name, _, attribute = self.claims.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError):
            return None


#: The backends of ray-zerocopy's distributions. An object whose nearest claimed type is
#: one of these, when that backend is not installed (or failed to import), gets an error
#: naming the install line instead of falling to a less specific backend.
KNOWN_BACKENDS: Mapping[str, KnownBackend] = MappingProxyType(
    {
        "nn": KnownBackend("nn", "torch.nn.Module"),
        "jit": KnownBackend("jit", "torch.jit.ScriptModule", "pip install 'ray-zerocopy[jit]'"),
        "export": KnownBackend("export", "torch.export.ExportedProgram", "pip install 'ray-zerocopy[export]'"),
    }
)


class _Candidate(Protocol):
    """A backend as selection sees it: the types it claims, and what choosing it gives."""

    @property
    def model_types(self) -> tuple[type, ...]: ...

    def handles(self, obj: object) -> bool: ...

    def choose(self, obj: object) -> Backend: ...


@dataclass(frozen=True)
class _Installed:
    """An installed backend: choosing it gives it."""

    backend: Backend

    @property
    def model_types(self) -> tuple[type, ...]:
        return self.backend.model_types

    def handles(self, obj: object) -> bool:
        return self.backend.handles(obj)

    def choose(self, obj: object) -> Backend:
        return self.backend


@dataclass(frozen=True)
class _Missing:
    """A known backend that is not installed or failed to import: choosing it raises.

    It takes part in selection with the type it claims, so an object of that type gets
    an error naming the install line rather than a less specific backend.
    """

    known: KnownBackend
    claimed: type
    broken: str | None

    @property
    def model_types(self) -> tuple[type, ...]:
        return (self.claimed,)

    def handles(self, obj: object) -> bool:
        return isinstance(obj, self.claimed)

    def choose(self, obj: object) -> Backend:
        state = f"failed to import ({self.broken})" if self.broken else "not installed"
        raise BackendNotInstalledError(
            f"{type(obj).__qualname__} needs the {self.known.name!r} backend, which is {state}. "
            f"Install it with: {self.known.install_hint}"
        )


def _rank(candidate: _Candidate, obj: object) -> tuple[int, int] | None:
    """How well ``candidate`` fits ``obj`` (lower is better), or None if it does not take it.

    A candidate whose types lie in ``type(obj)``'s MRO ranks by the nearest one; one that
    accepts ``obj`` by duck typing alone ranks after every typed match.
    """
    if not candidate.handles(obj):
        return None
    mro = type(obj).__mro__
    distances = [mro.index(t) for t in candidate.model_types if t in mro]
    return (0, min(distances)) if distances else (1, 0)


class _Registry:
    """The backends of this process: discovered by entry point, loaded on use, or registered."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._entry_points: dict[str, metadata.EntryPoint] | None = None
        self._loaded: dict[str, Backend] = {}
        self._broken: dict[str, str] = {}

    def _discover(self) -> dict[str, metadata.EntryPoint]:
        with self._lock:
            if self._entry_points is None:
                found: dict[str, metadata.EntryPoint] = {}
                for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
                    found.setdefault(entry_point.name, entry_point)
                self._entry_points = found
            return self._entry_points

    def names(self) -> list[str]:
        with self._lock:
            return sorted(set(self._discover()) | set(self._loaded))

    def _load_located(self, name: str, locator: str) -> Backend | None:
        """Import a backend straight from ``module:attr``, skipping discovery; None if that fails."""
        try:
            loaded = metadata.EntryPoint(name, locator, ENTRY_POINT_GROUP).load()
            backend = loaded() if isinstance(loaded, type) else loaded
        except Exception:
            logger.debug("backend %r not importable from %r; discovering entry points", name, locator)
            return None
        if not isinstance(backend, Backend) or backend.name != name:
            return None
        self._loaded[name] = backend
        return backend

    def get(self, name: str, locator: str | None = None) -> Backend:
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            if locator and self._entry_points is None:
                located = self._load_located(name, locator)
                if located is not None:
                    return located
            entry_point = self._discover().get(name)
            if entry_point is None:
                known = KNOWN_BACKENDS.get(name)
                if known is not None and known.install_hint:
                    raise BackendNotInstalledError(
                        f"The {name!r} backend is not installed. Install it with: {known.install_hint}"
                    )
                raise BackendError(
                    f"No ray-zerocopy backend named {name!r}. Installed: {self.names() or 'none'}. "
                    f"Third-party backends register under the entry-point group {ENTRY_POINT_GROUP!r}."
                )
            try:
                loaded = entry_point.load()
                backend = loaded() if isinstance(loaded, type) else loaded
                if not isinstance(backend, Backend):
                    raise InvalidBackendError(f"{entry_point.value} does not implement the Backend protocol")
            except Exception as exc:
                self._broken[name] = f"{type(exc).__name__}: {exc}"
                raise BackendError(
                    f"Error importing ray-zerocopy backend plugin {name!r} ({entry_point.value}): {exc}"
                ) from exc
            self._loaded[name] = backend
            return backend

    def all_loadable(self) -> list[Backend]:
        backends = []
        for name in self.names():
            if name in self._broken:  # reported once, when it failed; not retried
                continue
            try:
                backends.append(self.get(name))
            except BackendError as exc:
                if name not in self._broken:
                    raise
                logger.warning("%s; the other backends are still used.", exc)
        return backends

    def register(self, backend: Backend, replace: bool) -> None:
        if not isinstance(backend, Backend):
            raise InvalidBackendError(
                f"{backend!r} does not implement the ray_zerocopy_core Backend protocol "
                "(name, model_types, handles, extract, rebuild). Subclass ray_zerocopy_core.plugin.Backend "
                "to inherit handles, and define the others."
            )
        with self._lock:
            current = self._loaded.get(backend.name)
            if current is not None and current is not backend and not replace:
                raise InvalidOptionError(
                    f"A backend named {backend.name!r} is already registered; pass replace=True to replace it."
                )
            self._loaded[backend.name] = backend
            self._broken.pop(backend.name, None)

    def reset(self) -> None:
        with self._lock:
            self._entry_points = None
            self._loaded.clear()
            self._broken.clear()

    def broken(self) -> Mapping[str, str]:
        """Plugins that failed to import so far: entry-point name to the error (a read-only copy)."""
        with self._lock:
            return MappingProxyType(dict(self._broken))

    def candidates(self) -> list[_Candidate]:
        """Every loadable backend, then a stand-in for each known backend that is unavailable."""
        loadable = self.all_loadable()
        usable = {backend.name for backend in loadable}
        found: list[_Candidate] = [_Installed(backend) for backend in loadable]
        for known in KNOWN_BACKENDS.values():
            claimed = known.claimed_type() if known.install_hint and known.name not in usable else None
            if claimed is not None:
                found.append(_Missing(known, claimed, self._broken.get(known.name)))
        return found

    def find(self, obj: object) -> Backend | None:
        """The best-ranked candidate for ``obj``, chosen (see :func:`find_backend`)."""
        if isinstance(obj, ModelSource):
            return self.get(obj.backend_name)
        ranked = [(rank, c) for c in self.candidates() if (rank := _rank(c, obj)) is not None]
        if not ranked:
            return None
        best = min(ranked, key=lambda pair: pair[0])[1]  # the first of equals
        return best.choose(obj)


_registry = _Registry()


def get_backend(name: str, *, locator: str | None = None) -> Backend:
    """Return the backend registered as ``name``, importing its plugin on first use.

    ``locator`` (``"module:attr"``, as recorded in a stored payload) lets a fresh worker
    import the backend directly instead of scanning every installed distribution's
    entry points, which costs tens of milliseconds; discovery is the fallback.

    Raises:
        BackendNotInstalledError: ``name`` is a known backend whose package is missing.
        BackendError: no such backend, or its plugin failed to import.
    """
    return _registry.get(name, locator)


def backend_locator(backend: Backend) -> str:
    """Where ``backend``'s class lives, as ``module:qualname`` (see :func:`get_backend`)."""
    return f"{type(backend).__module__}:{type(backend).__qualname__}"


def backend_names() -> list[str]:
    """Names of every backend registered or declared by an entry point, sorted."""
    return _registry.names()


def broken_backends() -> Mapping[str, str]:
    """Plugins that failed to import so far: entry-point name to the error, read-only."""
    return _registry.broken()


def register_backend(backend: Backend, *, replace: bool = False) -> None:
    """Register ``backend`` in this process under ``backend.name``.

    Registering the same object twice is a no-op; a different backend under a taken
    name needs ``replace=True``. Backends meant for every process (Ray workers too)
    belong in an entry point instead.
    """
    _registry.register(backend, replace)


def reset_registry() -> None:
    """Forget discovered and registered backends; the next lookup reads entry points again."""
    _registry.reset()


def find_backend(obj: object) -> Backend | None:
    """The most specific installed backend that handles ``obj``, or ``None``.

    One rule picks it: a :class:`~ray_zerocopy_core.plugin.ModelSource` gets the backend it
    names; otherwise the backend whose ``model_types`` lie nearest ``type(obj)`` in its
    MRO (and whose ``handles(obj)`` agrees); a backend that accepts ``obj`` only by duck
    typing comes after every typed match. Known backends of other distributions take
    part with the type they claim: if one of them is nearest but not installed, the
    object gets an error naming the install line rather than a less specific backend.

    Raises:
        BackendNotInstalledError: ``obj`` belongs to a known backend that is not
            installed or failed to import (e.g. a ScriptModule without ``ray-zerocopy[jit]``).
    """
    return _registry.find(obj)


def backend_for(obj: object) -> Backend:
    """Like :func:`find_backend`, but raise a clear error when nothing handles ``obj``."""
    backend = find_backend(obj)
    if backend is None:
        broken = broken_backends()
        note = f" (plugins that failed to import: {', '.join(broken)})" if broken else ""
        raise BackendError(
            f"No ray-zerocopy backend can share an object of type {type(obj).__qualname__}{note}. "
            f"Installed backends: {', '.join(backend_names()) or 'none'}."
        )
    return backend
