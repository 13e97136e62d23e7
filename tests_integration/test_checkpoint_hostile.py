"""Hostile and corrupted checkpoint files shared on a real local Ray: refused, and nothing left in the store.

Each file goes through ``ActorWrapper.from_checkpoint`` (read in this process) and
``publish`` (read in the holder's task): both raise a CheckpointError naming the file,
the object store is back where it was, no name is published, and a pickle's code never
runs anywhere (it would create a marker file on this node).
"""

from __future__ import annotations

import gc
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from object_store import store_bytes_used, wait_for_store_at_most
from torch import nn

from ray_zerocopy import ActorWrapper, Checkpoint, load_published, publish
from ray_zerocopy.errors import CheckpointError, ModelNotPublishedError

pytestmark = pytest.mark.usefixtures("ray_local")


class Small(nn.Module):
    """The model every file claims to hold."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(8, 4)


class Payload:
    """A pickle that carries code: unpickling it calls ``open(marker, "w")``, which creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def safetensors_file(path: Path, header: dict[str, Any], data: bytes) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def entry(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def hostile(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    """A checkpoint path of the given kind, and the file its error must name."""
    path = tmp_path / "model.safetensors"
    if kind == "negative dimension":  # raised torch's RuntimeError before the header was checked field by field
        safetensors_file(
            path,
            {"layer.weight": entry("F32", [-4, -8], 0, 128), "layer.bias": entry("F32", [4], 128, 144)},
            bytes(144),
        )
    elif kind == "overlapping tensors":
        safetensors_file(
            path, {"layer.weight": entry("F32", [4, 8], 0, 128), "layer.bias": entry("F32", [4], 112, 128)}, bytes(128)
        )
    elif kind == "weight_map not an object":  # raised an AttributeError before
        path = tmp_path
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": ["model.safetensors"]}))
        return path, tmp_path / "model.safetensors.index.json"
    elif kind == "shard outside the directory":
        directory = tmp_path / "checkpoint"
        directory.mkdir()
        torch.manual_seed(0)
        state = Small().state_dict()
        header = {"layer.weight": entry("F32", [4, 8], 0, 128), "layer.bias": entry("F32", [4], 128, 144)}
        data = b"".join(t.numpy().tobytes() for t in state.values())
        safetensors_file(tmp_path / "outside.safetensors", header, data)  # valid, and there: still refused
        index = directory / "model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": dict.fromkeys(state, "../outside.safetensors")}))
        return directory, index
    elif kind == "pickle carrying code":
        path = tmp_path / "model.pt"
        torch.save({"layer.weight": torch.zeros(4, 8), "layer.bias": Payload(tmp_path / "code-ran")}, path)
    elif kind == "cut torch.save file":
        path = tmp_path / "model.bin"
        torch.save(Small().state_dict(), path)
        path.write_bytes(path.read_bytes()[:-100])
    return path, path


KINDS = [
    "negative dimension",
    "overlapping tensors",
    "weight_map not an object",
    "shard outside the directory",
    "pickle carrying code",
    "cut torch.save file",
]


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_files_are_refused_by_name_and_store_nothing(tmp_path: Path, kind: str) -> None:
    path, culprit = hostile(tmp_path, kind)
    name = f"hostile-{KINDS.index(kind)}"
    before = store_bytes_used()
    with pytest.raises(CheckpointError) as caught:
        ActorWrapper.from_checkpoint(Checkpoint(path, Small))
    assert str(culprit) in str(caught.value), str(caught.value)
    with pytest.raises(CheckpointError) as caught:
        publish(name, Checkpoint(path, Small))  # read in the holder's task
    assert str(culprit) in str(caught.value), str(caught.value)
    with pytest.raises(ModelNotPublishedError):
        load_published(name)
    assert not (tmp_path / "code-ran").exists(), "a pickle's code ran"
    del caught
    gc.collect()
    assert wait_for_store_at_most(before) <= before, "a refused checkpoint left bytes in the object store"
