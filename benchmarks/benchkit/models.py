"""Benchmark models, built locally: a transformer-like stack sized in MiB.

The stack keeps ~200 tensors whatever its size (16 blocks of attention projections,
MLP and layer norms, plus embedding and output head), so load costs that grow per
tensor and costs that grow per byte can be told apart. Variants: float32/bfloat16,
tied embedding = output projection, and a traced TorchScript copy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

MIB = 1024**2
N_BLOCKS = 16
VOCAB = 4096
#: Input of the first forward: (batch, sequence) token ids; small, so the first
#: forward is dominated by touching every weight page, not by arithmetic.
INPUT_SHAPE = (1, 4)


@dataclass(frozen=True)
class ModelSpec:
    """What to build: weight size in MiB, dtype name, tied head, TorchScript, torch.export."""

    size_mib: int
    dtype: str = "float32"
    tied: bool = False
    scripted: bool = False
    exported: bool = False

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of the weights."""
        return getattr(torch, self.dtype)

    @property
    def label(self) -> str:
        """Short human label, e.g. ``256 MiB float32 tied``."""
        extras = [self.dtype] + (["tied"] if self.tied else []) + (["TorchScript"] if self.scripted else [])
        extras += ["torch.export"] if self.exported else []
        return f"{self.size_mib} MiB " + " ".join(extras)

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (see :func:`spec_from_dict`)."""
        return asdict(self)


def spec_from_dict(data: dict[str, object]) -> ModelSpec:
    """Inverse of :meth:`ModelSpec.to_dict`."""
    return ModelSpec(**data)  # type: ignore[arg-type]


class Block(nn.Module):
    """Pre-norm transformer block: single-head attention and a 4x MLP (12 tensors)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)
        self.scale = 1.0 / math.sqrt(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attention = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        x = x + self.proj(attention @ v)
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))


class TransformerLike(nn.Module):
    """Embedding, ``N_BLOCKS`` blocks, final norm and output head (optionally tied)."""

    def __init__(self, width: int, tied: bool = False) -> None:
        super().__init__()
        self.tied = tied
        self.embed = nn.Embedding(VOCAB, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(N_BLOCKS))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Make the output head share the embedding matrix (tied variant only)."""
        if self.tied:
            self.head.weight = self.embed.weight

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Only the embedding lookup: a call whose own cost does not grow with the model."""
        return self.embed(ids)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def width_for(spec: ModelSpec) -> int:
    """The block width whose weights come closest to ``spec.size_mib`` (multiple of 8)."""
    elements = spec.size_mib * MIB / spec.torch_dtype.itemsize
    embeddings = VOCAB * (1 if spec.tied else 2)
    # per block 12 w^2 + 13 w (weights, biases, norms); plus embeddings * w + 2 w.
    a, b = 12 * N_BLOCKS, 13 * N_BLOCKS + embeddings + 2
    width = (-b + math.sqrt(b * b + 4 * a * elements)) / (2 * a)
    return max(8, round(width / 8) * 8)


def blank_model(spec: ModelSpec) -> TransformerLike:
    """The model's structure on the ``meta`` device: no memory, no initialization cost."""
    with torch.device("meta"):
        model = TransformerLike(width_for(spec), tied=spec.tied)
    return model.to(spec.torch_dtype)


def build_model(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The eager model (or its traced TorchScript copy), deterministic for ``seed``, eval mode."""
    model = blank_model(spec).to_empty(device="cpu")
    model.tie_weights()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    model.eval().requires_grad_(False)
    if spec.scripted:
        return trace(model)
    if spec.exported:
        return export(model)
    return model


def trace(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` of ``model`` on :func:`make_input`."""
    with torch.no_grad():
        return torch.jit.trace(model, make_input())


def export(model: nn.Module) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on :func:`make_input`."""
    with torch.no_grad():
        return torch.export.export(model, (make_input(),))


def make_input() -> torch.Tensor:
    """The fixed input of every first forward."""
    return torch.arange(INPUT_SHAPE[0] * INPUT_SHAPE[1]).reshape(INPUT_SHAPE) % VOCAB


def model_tensors(model: Any) -> list[torch.Tensor]:
    """Parameters and buffers of a module; state dict and constants of an ExportedProgram."""
    if isinstance(model, torch.export.ExportedProgram):
        return [*model.state_dict.values(), *model.constants.values()]
    return list(model.parameters()) + list(model.buffers())


def weight_bytes(model: Any) -> int:
    """Bytes of distinct tensor storage in ``model`` (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in model_tensors(model):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def spec_weight_bytes(spec: ModelSpec) -> int:
    """Weight bytes of the model ``spec`` describes, computed on the meta device (no memory)."""
    tensors = {id(t): t for t in model_tensors(blank_model(spec))}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def tensor_count(model: Any) -> int:
    """Number of distinct parameter and buffer tensors."""
    return len({id(t) for t in model_tensors(model)})


def state_dict_for_files(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each shared tensor once (safetensors refuses duplicates)."""
    seen: set[int] = set()
    result = {}
    for name, tensor in model.state_dict().items():
        if tensor.untyped_storage().data_ptr() in seen:
            continue
        seen.add(tensor.untyped_storage().data_ptr())
        result[name] = tensor.contiguous()
    return result
