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
    """Finds ``package`` (and its submodules) only to refuse them, as if not installed."""

    def __init__(self, package: str) -> None:
        self.package = package

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == self.package or fullname.startswith(self.package + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


@contextmanager
def not_installed(package: str, *, declared: bool = False) -> Iterator[None]:
    """Inside the block, ``package`` cannot be imported and its backend entry point is gone.

    ``declared=True`` keeps the entry point, as for a plugin that is installed but fails
    to import. Modules, entry points and the backend registry are restored afterwards.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            patch.delitem(sys.modules, name)
        patch.setattr(sys, "meta_path", [_Refuse(package), *sys.meta_path])
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
            yield
        finally:
            patch.undo()
            registry.reset_registry()
