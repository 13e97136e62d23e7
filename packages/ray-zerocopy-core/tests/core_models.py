"""Small models and a round trip without Ray, shared by the core unit tests."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.plugin import LoadOptions


class TiedLM(nn.Module):
    """A tiny language model whose output projection is its embedding (tied weights)."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)))


def round_trip(model: Any, **options: Any) -> Any:
    """Extract then rebuild ``model`` in this process (no object store involved)."""
    backend = NNBackend()
    return backend.rebuild(backend.extract(model), LoadOptions(**options))
