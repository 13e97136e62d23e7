"""The stored form without Ray: chunk sizes, chunk plans, the order a payload's reads are paced, version checks."""

from __future__ import annotations

import mmap
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from ray_zerocopy_core import memory, store
from ray_zerocopy_core.checkpoint.pacing import FilePacing
from ray_zerocopy_core.errors import FormatVersionError, InvalidReferenceError
from ray_zerocopy_core.inspection import cached_file_bytes
from ray_zerocopy_core.plugin import FORMAT_VERSION, RELEASE, ModelPayload
from ray_zerocopy_core.representation import build_table

MIB = 1024**2


def arrays(*sizes: int) -> list[np.ndarray]:
    return [np.zeros(size, dtype=np.uint8) for size in sizes]


def test_chunk_size_is_a_64th_of_the_model_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(store.CHUNK_SIZE_ENV, raising=False)
    assert store.chunk_bytes(8 * MIB) == store.MIN_CHUNK_BYTES
    assert store.chunk_bytes(256 * MIB) == 4 * MIB
    assert store.chunk_bytes(100 * 1024 * MIB) == store.MAX_CHUNK_BYTES
    monkeypatch.setenv(store.CHUNK_SIZE_ENV, "2")
    assert store.chunk_bytes(100 * 1024 * MIB) == 2 * MIB


def test_chunks_keep_storage_order_and_a_large_storage_runs_alone() -> None:
    storages = arrays(MIB // 2, MIB // 2, MIB // 2, 3 * MIB, 100, MIB // 2)
    plan = store.plan_chunks(storages, MIB)
    assert plan == ((0, 1), (2,), (3,), (4, 5))
    assert [i for chunk in plan for i in chunk] == list(range(len(storages)))


def test_small_storages_between_large_ones_join_a_chunk_and_never_run_alone() -> None:
    weights_and_biases = arrays(*[4 * MIB, 4096] * 3)  # an nn.Linear stack: each bias between two weights
    assert store.plan_chunks(weights_and_biases, 2 * MIB) == ((0,), (1, 2), (3, 4, 5))


class RecordedReading:
    """A SourceReading that records the calls the store makes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def read_ahead(self, storages: Sequence[int]) -> None:
        self.calls.append(("ahead", tuple(storages)))

    def release(self, storages: Sequence[int]) -> None:
        self.calls.append(("release", tuple(storages)))


def test_a_payload_read_from_files_is_told_the_next_chunk_before_and_the_stored_one_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(store.CHUNK_SIZE_ENV, "1")
    table = build_table([(f"w{i}", torch.zeros(MIB // 4, dtype=torch.float32)) for i in range(3)])  # 1 MiB each
    reading = RecordedReading()
    head, count, chunks = store.stored_parts(ModelPayload("nn", b"skeleton", table, reading=reading))
    assert count == 3 and head["chunks"] == [] and head["nbytes"] == table.nbytes
    seen = []
    for position, chunk in enumerate(chunks):
        assert chunk[0].nbytes == chunk[-1].nbytes == memory.GUARD_BYTES and not chunk[0].any()
        assert ("release", (position,)) not in reading.calls  # not released before it is stored
        seen.append(list(reading.calls))
    assert seen[0] == [("ahead", (0,)), ("ahead", (1,))]  # the first, and the next while the first is copied
    assert reading.calls == [
        ("ahead", (0,)),
        ("ahead", (1,)),
        ("release", (0,)),
        ("ahead", (2,)),
        ("release", (1,)),
        ("release", (2,)),
    ]
    index = pickle.loads(head["index"])
    assert index.chunks == ((0,), (1,), (2,)) and index.skeleton == b"skeleton"


def test_a_head_of_another_release_or_not_a_head_is_refused() -> None:
    head = store.StoredModel(index=b"", chunks=[], nbytes=0, format_version=FORMAT_VERSION, release="0.9.1")
    with pytest.raises(FormatVersionError, match=r"ray-zerocopy 0\.9\.1.*Install the same"):
        store.fetch_stored(head)
    with pytest.raises(FormatVersionError, match="format 3"):
        store.fetch_stored({**head, "release": RELEASE, "format_version": 3})
    with pytest.raises(InvalidReferenceError, match="stored model"):
        store.fetch_stored({"weights": 1})


def written(path: Path, nbytes: int) -> Path:
    with open(path, "wb") as out:
        out.write(os.urandom(nbytes))
        out.flush()
        os.fsync(out.fileno())  # dirty pages cannot be dropped; checkpoint files are not dirty either
    return path


def page_cache_can_drop(directory: Path) -> str | None:
    """Why the page cache of ``directory`` cannot show a file's pages dropped (None if it can)."""
    path = written(directory / "probe.bin", 2 * MIB)
    with open(path, "rb") as handle:
        handle.read()
        kept = cached_file_bytes(path)
        if kept < 2 * MIB:
            return f"the page cache of {directory} does not keep a file just read ({kept} bytes kept)"
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    if cached_file_bytes(path) >= kept:
        return f"POSIX_FADV_DONTNEED drops nothing on the filesystem of {directory} (tmpfs?)"
    return None


def test_pacing_drops_a_stored_storage_s_file_pages_and_leaves_the_others(tmp_path: Path) -> None:
    reason = page_cache_can_drop(tmp_path)
    if reason is not None:
        pytest.skip(reason)
    path = written(tmp_path / "weights.bin", 8 * MIB)
    with open(path, "rb") as handle:
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    view = np.frombuffer(mapping, dtype=np.uint8)
    storages = [view[: 4 * MIB], view[4 * MIB :]]
    pacing = FilePacing(storages, [path])
    pacing.read_ahead([0, 1])
    _ = int(storages[0].sum()) + int(storages[1].sum())  # every page read
    assert cached_file_bytes(path) >= 8 * MIB - mmap.PAGESIZE
    pacing.release([0])
    after = cached_file_bytes(path)
    assert after <= 4 * MIB + mmap.PAGESIZE, after  # the first half left the cache, the second stayed
    assert after >= 4 * MIB - mmap.PAGESIZE
    pacing.close()
    del pacing, view, storages
    mapping.close()
