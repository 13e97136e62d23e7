"""ray-zerocopy-export: the torch.export backend of ray-zerocopy.

Installing this distribution registers the ``export`` backend (entry-point group
``ray_zerocopy.backends``): every ray-zerocopy wrapper then shares
:class:`torch.export.ExportedProgram` objects, and ``load()`` returns a
:class:`~ray_zerocopy_export.backend.ZeroCopyExportedProgram` whose weights alias Ray's
object store.
"""

from __future__ import annotations

from ray_zerocopy_core.plugin import installed_version
from ray_zerocopy_export.backend import ExportBackend, ZeroCopyExportedProgram

__version__ = installed_version("ray-zerocopy-export")

__all__ = ["ExportBackend", "ZeroCopyExportedProgram", "__version__"]
