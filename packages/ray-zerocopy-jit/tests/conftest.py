"""Fixtures of the jit backend's unit tests: a scripted and a traced Tower."""

from __future__ import annotations

import pytest
import torch
from jit_models import script, trace, trained_tower


@pytest.fixture(params=["scripted", "traced"])
def script_module(request: pytest.FixtureRequest) -> torch.jit.ScriptModule:
    """The Tower test model, scripted or traced."""
    model = trained_tower()
    if request.param == "scripted":
        return script(model)
    return trace(model, torch.randn(4, 16))
