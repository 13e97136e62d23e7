"""Making this process behave as if one of our distributions were not installed."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import pytest

from ray_zerocopy_core import registry


class _Refuse(MetaPathFinder):
    """Finds ``package`` (and its submodules) only to refuse them, as if not installed; keeps each name asked for."""

    def __init__(self, package: str) -> None:
        self.package = package
        self.refused: list[str] = []

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            self.refused.append(fullname)
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@contextmanager
def not_installed(package: str, *, declared: bool = False, importers: tuple[str, ...] = ()) -> Iterator[list[str]]:
    """Inside the block, ``package`` cannot be imported and its backend entry point is gone.

    Yields the list of module names the block tried to import from ``package`` (and was refused).

    ``declared=True`` keeps the entry point, as for a plugin that is installed but fails
    to import. ``importers`` are modules already imported that import ``package``
    (``ray_zerocopy.jit``): they are forgotten too, so importing them again meets the
    block. Modules, entry points and the backend registry are restored afterwards.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [m for m in sys.modules if any(_in(m, p) for p in (package, *importers))]:
            patch.delitem(sys.modules, name)
        for importer in importers:
            parent, _, child = importer.rpartition(".")
            if parent in sys.modules:
                patch.delattr(sys.modules[parent], child, raising=False)
        refuse = _Refuse(package)
        patch.setattr(sys, "meta_path", [refuse, *sys.meta_path])
        if not declared:
            real_entry_points = metadata.entry_points

            def entry_points_without_it(**params: Any) -> Any:
                found = real_entry_points(**params)
                if params.get("group") == registry.ENTRY_POINT_GROUP:
                    return metadata.EntryPoints(ep for ep in found if not ep.value.startswith(package))
                return found

            patch.setattr(metadata, "entry_points", entry_points_without_it)
        registry.reset_registry()
        try:
            yield refuse.refused
        finally:
            patch.undo()
            registry.reset_registry()
