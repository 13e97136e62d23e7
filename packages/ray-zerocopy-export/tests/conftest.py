"""Fixtures of the export backend's unit tests: the exported Tower."""

from __future__ import annotations

import pytest
from export_models import export_tower
from torch.export import ExportedProgram


@pytest.fixture(scope="module")
def program() -> ExportedProgram:
    """The trained Tower, exported with a dynamic batch dimension."""
    return export_tower()
