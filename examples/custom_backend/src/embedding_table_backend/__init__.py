"""An example ray-zerocopy backend for a non-``nn.Module`` model type: ``EmbeddingTable``.

The backend is registered in this distribution's ``pyproject.toml`` under the
``ray_zerocopy.backends`` entry-point group, so ray-zerocopy finds it in the driver and
in every Ray worker without any code in core knowing about it.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

import torch

from ray_zerocopy_core.plugin import Backend, LoadOptions, ModelPayload, build_table, materialize

__all__ = ["EmbeddingTable", "EmbeddingTableBackend"]


class EmbeddingTable:
    """A word-to-vector lookup: ``vocab[i]`` has the vector ``vectors[i]``."""

    def __init__(self, vocab: list[str], vectors: torch.Tensor) -> None:
        if len(vocab) != vectors.shape[0]:
            raise ValueError(f"{len(vocab)} words but {vectors.shape[0]} vectors")
        self.vocab = list(vocab)
        self.vectors = vectors
        self._index = {word: i for i, word in enumerate(self.vocab)}

    def __call__(self, words: list[str]) -> torch.Tensor:
        """The vectors of ``words``, one row per word."""
        return self.vectors[[self._index[w] for w in words]]

    def most_similar(self, word: str) -> str:
        """The other word whose vector has the highest cosine similarity to ``word``'s."""
        normed = torch.nn.functional.normalize(self.vectors, dim=1)
        scores = normed @ normed[self._index[word]]
        scores[self._index[word]] = -2.0
        return self.vocab[int(scores.argmax())]


class EmbeddingTableBackend(Backend):
    """Shares :class:`EmbeddingTable`: the vocabulary as skeleton, the vectors as tensor bytes.

    ``Backend`` gives it ``handles``: it takes the objects of its ``model_types``.
    """

    name: ClassVar[str] = "embedding-table"
    model_types: ClassVar[tuple[type, ...]] = (EmbeddingTable,)

    def extract(self, model: Any) -> ModelPayload:
        """Vocabulary to JSON bytes; the vector matrix indexed by ``build_table`` without a copy."""
        skeleton = json.dumps({"vocab": model.vocab}).encode()
        return ModelPayload(self.name, skeleton, build_table([("vectors", model.vectors)]))

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Views of the stored bytes (read-only, zero-copy on the CPU) put back in an EmbeddingTable."""
        (vectors,) = materialize(payload.table, options)
        return EmbeddingTable(json.loads(payload.skeleton)["vocab"], vectors)
