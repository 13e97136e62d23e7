"""Tests of the example backend: protocol, discovery, and a round trip without Ray."""

from __future__ import annotations

import torch
from embedding_table_backend import EmbeddingTable, EmbeddingTableBackend

from ray_zerocopy_core.options import LoadOptions
from ray_zerocopy_core.plugin import Backend
from ray_zerocopy_core.registry import backend_for, backend_names


def make_table() -> EmbeddingTable:
    return EmbeddingTable(["a", "b", "c"], torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_implements_the_protocol() -> None:
    assert isinstance(EmbeddingTableBackend(), Backend)


def test_found_through_its_entry_point() -> None:
    assert "embedding-table" in backend_names()
    assert backend_for(make_table()).name == "embedding-table"
    assert backend_for(torch.nn.Linear(2, 2)).name == "nn"  # the other backends are untouched


def test_round_trip_keeps_words_and_vectors() -> None:
    backend = EmbeddingTableBackend()
    table = make_table()
    payload = backend.extract(table)
    assert payload.table.nbytes == table.vectors.nbytes
    rebuilt = backend.rebuild(payload, LoadOptions(writable=True))
    assert rebuilt.vocab == table.vocab
    assert torch.equal(rebuilt(["c", "a"]), table(["c", "a"]))
