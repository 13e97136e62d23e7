"""Small exported programs for the export backend's unit tests, and a round trip without Ray."""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ray_zerocopy_core.plugin import LoadOptions, ModelPayload
from ray_zerocopy_export.backend import ExportBackend

VOCAB = 50
DIM = 16


class Tower(nn.Module):
    """Tied embedding/head, a BatchNorm (persistent buffers), a non-persistent buffer, a constant."""

    def __init__(self, dim: int = DIM, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, dtype=dtype)
        self.proj = nn.Linear(dim, dim, dtype=dtype)
        self.norm = nn.BatchNorm1d(dim, dtype=dtype)
        self.head = nn.Linear(dim, VOCAB, bias=False, dtype=dtype)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("offset", torch.linspace(-1, 1, dim, dtype=dtype), persistent=False)
        self.scale = torch.linspace(0.5, 1.5, dim, dtype=dtype)  # a lifted tensor constant

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(tokens).mean(dim=1)
        hidden = self.norm(self.proj(hidden)) * self.scale + self.offset
        return self.head(torch.relu(hidden))


def tokens(batch: int = 4, length: int = 7, seed: int = 1) -> torch.Tensor:
    """A batch of token ids for :class:`Tower`."""
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def trained_tower(dim: int = DIM, dtype: torch.dtype = torch.float32) -> Tower:
    """A Tower with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = Tower(dim, dtype)
    model.train()
    with torch.no_grad():
        model(tokens(32))
    return model.eval()


def export_tower(dim: int = DIM, dtype: torch.dtype = torch.float32, *, dynamic: bool = True) -> ExportedProgram:
    """The trained Tower exported with a dynamic batch dimension (unless ``dynamic=False``)."""
    shapes = ({0: Dim("batch", min=1, max=1024)},) if dynamic else None
    return torch.export.export(trained_tower(dim, dtype), (tokens(),), dynamic_shapes=shapes)


class Mlp(nn.Module):
    """``layers`` square Linear layers of width ``width``: the same graph at any size."""

    def __init__(self, width: int, layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def export_mlp(width: int, layers: int = 4) -> ExportedProgram:
    """An exported :class:`Mlp` with small random weights (cheap to build at any size)."""
    with torch.device("meta"):
        model = Mlp(width, layers)
    model = model.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(width)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.uniform_(-(width**-0.5), width**-0.5, generator=generator)
    return torch.export.export(model, (torch.zeros(2, width),), dynamic_shapes=({0: Dim("batch")},))


def payload_of(program: ExportedProgram) -> ModelPayload:
    """The export backend's payload for ``program``."""
    return ExportBackend().extract(program)


def round_trip(program: ExportedProgram, options: LoadOptions | None = None) -> ExportedProgram:
    """Extract and rebuild ``program`` in this process (no Ray)."""
    backend = ExportBackend()
    return backend.rebuild(backend.extract(program), options or LoadOptions())
