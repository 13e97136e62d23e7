"""Fixtures of the core unit tests."""

from __future__ import annotations

import pytest
import torch
from core_models import TiedLM


@pytest.fixture
def tied_lm() -> TiedLM:
    torch.manual_seed(0)
    return TiedLM().eval()
