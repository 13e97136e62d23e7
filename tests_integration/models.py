"""Models and actors the integration tests share (importable by Ray workers too).

- :data:`MIB`; :func:`torchscript_allowed` silences torch's TorchScript deprecation
  warning, and only that, around the test's own ``torch.jit`` calls;
- :func:`identity`: an object's number for its whole process (``id`` is reused);
- :class:`TiedLM`: a small language model whose head is its embedding;
- :class:`Tower`: tied weights, BatchNorm statistics, a non-persistent buffer and a
  tensor constant, exportable with ``torch.export`` and scriptable;
- :class:`Loaded`: an actor that loads what it is given in ``__init__``, as users do;
- :class:`WhereTensorsLie`: where a task-mode worker's model keeps its weights.
"""

from __future__ import annotations

import itertools
import os
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
import torch
from torch import nn

MIB = 1024**2

#: torch's warning on every ``torch.jit`` entry point (script, trace, save, load...).
TORCHSCRIPT_DEPRECATION = r"`torch\.jit\.\w+` is deprecated"


@contextmanager
def torchscript_allowed() -> Iterator[None]:
    """Inside the block, torch's TorchScript deprecation warning is not shown (others are)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TORCHSCRIPT_DEPRECATION, category=DeprecationWarning)
        yield


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)`` without the deprecation warning."""
    with torchscript_allowed():
        return torch.jit.script(model)


def trace(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.trace(model, example)`` without the deprecation warning."""
    with torchscript_allowed():
        return torch.jit.trace(model, example)


_identities: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_next_identity = itertools.count(1)


def identity(obj: Any) -> int:
    """A number no other object of this process ever gets: ``id`` is reused once an object is freed."""
    if obj not in _identities:
        _identities[obj] = next(_next_identity)
    return _identities[obj]


class TiedLM(nn.Module):
    """A small language model: the output projection is the embedding; a buffer; a second method."""

    def __init__(self, vocab: int = 64, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encode(tokens))) * self.scale

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """The hidden states of ``tokens``."""
        return self.block(self.embed(tokens))

    def whoami(self) -> tuple[int, int]:
        """The process and the object answering (tells task workers and cached models apart)."""
        return os.getpid(), identity(self)


def tied_lm(seed: int = 0, vocab: int = 64, dim: int = 32) -> TiedLM:
    """A :class:`TiedLM` with weights fixed by ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return TiedLM(vocab, dim).eval()


#: Vocabulary of :class:`Tower`.
VOCAB = 64


class Tower(nn.Module):
    """Tied embedding/head, BatchNorm buffers, a non-persistent buffer, a lifted tensor constant.

    ``embed_only`` is a second method TorchScript keeps (``@torch.jit.export``).
    """

    def __init__(self, dim: int = 32, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim, dtype=dtype)
        self.proj = nn.Linear(dim, dim, dtype=dtype)
        self.norm = nn.BatchNorm1d(dim, dtype=dtype)
        self.head = nn.Linear(dim, VOCAB, bias=False, dtype=dtype)
        self.head.weight = self.embed.weight
        self.register_buffer("offset", torch.linspace(-1, 1, dim, dtype=dtype), persistent=False)
        self.scale = torch.linspace(0.5, 1.5, dim, dtype=dtype)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.proj(self.embed_only(tokens).mean(dim=1))) * self.scale + self.offset
        return self.head(torch.relu(hidden))

    @torch.jit.export
    def embed_only(self, tokens: torch.Tensor) -> torch.Tensor:
        """The token embeddings alone."""
        return self.embed(tokens)


def tokens(batch: int = 4, seed: int = 1, length: int = 9) -> torch.Tensor:
    """A batch of token ids for :class:`Tower` and the default :class:`TiedLM`."""
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def trained_tower(dim: int = 32, dtype: torch.dtype = torch.float32) -> Tower:
    """A :class:`Tower` with non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = Tower(dim, dtype)
    with torch.no_grad():
        model(tokens(32, seed=7))
    return model.eval()


@ray.remote(num_cpus=0.1)
class Loaded:
    """Loads the wrapper it is given in ``__init__`` (``load(**options)``), as users do.

    ``call`` runs the model; ``apply(fn)`` runs ``fn(model)`` in the actor (a check of
    where the weights live, a write...) and returns what it returns.
    """

    def __init__(self, wrapper: Any, **options: Any) -> None:
        self.model = wrapper.load(**options)

    def call(self, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` without autograd."""
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args, **kwargs)``, run in this actor."""
        return fn(self.model, *args, **kwargs)

    def drop(self) -> None:
        """Let go of the model."""
        self.model = None


def in_object_store(model: Any) -> bool:
    """Whether every tensor of ``model``'s state dict lies in the object store (for ``Loaded.apply``)."""
    from ray_zerocopy_core.inspection import aliases_object_store

    return all(aliases_object_store(t) for t in model.state_dict().values())


def where_tensors_lie(model: Any) -> dict[str, bool]:
    """For each tensor of ``model``'s state dict, whether it lies in the object store (for ``Loaded.apply``)."""
    from ray_zerocopy_core.inspection import aliases_object_store

    return {name: aliases_object_store(t) for name, t in model.state_dict().items()}


def process_id(model: Any) -> int:
    """The pid of the process holding ``model`` (for ``Loaded.apply``)."""
    return os.getpid()


class WhereTensorsLie:
    """A ``state_dict(destination=...)`` that records, per name, whether the tensor lies in the object store.

    ``state_dict`` fills it in the process that runs it: called through a task-mode wrapper
    whose ``method_names`` allow ``"state_dict"``, that is the task worker with its cached
    model, and what comes back is :attr:`in_object_store`, plain booleans.
    """

    def __init__(self) -> None:
        self.in_object_store: dict[str, bool] = {}

    def __setitem__(self, name: str, tensor: torch.Tensor) -> None:
        from ray_zerocopy_core.inspection import aliases_object_store

        self.in_object_store[name] = aliases_object_store(tensor)
