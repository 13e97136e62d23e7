"""Small TorchScript models for the jit backend's unit tests, and a round trip without Ray."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ray_zerocopy_core.plugin import LoadOptions, ModelPayload
from ray_zerocopy_jit.backend import JITBackend


class Tower(nn.Module):
    """Nested submodules, a BatchNorm (buffers), a plain tensor attribute, an extra method."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.blocks = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Sequential(nn.Linear(dim, dim)))
        self.head = nn.Linear(dim, dim, bias=False)
        self.head.weight = self.embed.weight  # tied
        self.scale = torch.linspace(0.5, 1.5, dim)  # neither parameter nor buffer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.norm(self.embed(x))) * self.scale)

    @torch.jit.export
    def embed_only(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)


def trained_tower(dim: int = 16) -> Tower:
    """A Tower with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = Tower(dim)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, dim))
    return model.eval()


#: torch's warning on every ``torch.jit`` entry point (script, trace, save, load, freeze...).
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextmanager
def torchscript_allowed() -> Iterator[None]:
    """Inside the block, torch's TorchScript deprecation warning is not shown (others are)."""
    with warnings.catch_warnings():
        for category in (DeprecationWarning, FutureWarning):  # torch 2.13's, torch 2.14's
            warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=category)
        yield


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script`` without torch's deprecation warning in the test log."""
    with torchscript_allowed():
        return torch.jit.script(model)


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` without torch's deprecation warning in the test log."""
    with torchscript_allowed():
        return torch.jit.trace(model, example)


def round_trip(model: Any, **options: Any) -> Any:
    """Extract then rebuild ``model`` in this process (no object store involved)."""
    backend = JITBackend()
    return backend.rebuild(backend.extract(model), LoadOptions(**options))


def payload_of(model: Any) -> ModelPayload:
    """The jit backend's payload for ``model``."""
    return JITBackend().extract(model)
