"""Hatch metadata hook shared by the three distributions: one version, pinned siblings.

The version lives in the repository's ``VERSION`` file. Each package lists its
dependencies in ``[tool.hatch.metadata.hooks.custom]`` with ``{version}`` where a
sibling must be pinned to the same release; this hook fills the version in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.metadata.plugin.interface import MetadataHookInterface


def read_version(package_root: str) -> str:
    """Return the release version from the nearest ``VERSION`` file above a package."""
    for folder in (Path(package_root), *Path(package_root).parents):
        candidate = folder / "VERSION"
        if candidate.is_file():
            return candidate.read_text().strip()
    raise FileNotFoundError(f"no VERSION file found above {package_root}")


class LockstepMetadataHook(MetadataHookInterface):
    """Set ``version`` and fill ``{version}`` into the dependency lists."""

    def update(self, metadata: dict[str, Any]) -> None:
        version = read_version(self.root)
        metadata["version"] = version
        dependencies = self.config.get("dependencies")
        if dependencies is not None:
            metadata["dependencies"] = [dep.format(version=version) for dep in dependencies]
        extras = self.config.get("optional-dependencies")
        if extras is not None:
            metadata["optional-dependencies"] = {
                name: [dep.format(version=version) for dep in deps] for name, deps in extras.items()
            }
