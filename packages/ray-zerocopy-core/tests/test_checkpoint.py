"""Checkpoint files read into payloads without Ray: formats, dtypes, conversions and every bad input."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from ray_zerocopy_core import Checkpoint
from ray_zerocopy_core.checkpoint.files import SAFETENSORS_DTYPES, CheckpointFiles
from ray_zerocopy_core.checkpoint.huggingface import transformers_class
from ray_zerocopy_core.checkpoint.reader import CheckpointReader, parameters_on_meta
from ray_zerocopy_core.errors import CheckpointError, CheckpointNotFoundError, InvalidOptionError
from ray_zerocopy_core.inspection import cached_file_bytes
from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.options import LoadOptions

DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], header_extra: dict | None = None) -> None:
    """A safetensors file written by hand (the format: u64 header length, JSON header, raw bytes)."""
    header: dict = {"__metadata__": {"format": "pt"}, **(header_extra or {})}
    blobs, offset = [], 0
    for key, tensor in tensors.items():
        data = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[key] = {
            "dtype": DTYPE_CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


class Net(nn.Module):
    """Parameters, a persistent buffer (BatchNorm stats), a non-persistent buffer and a tie."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.hidden = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 16), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.hidden(self.embed(ids)))) * self.scale


def reference() -> Net:
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        net.norm.running_mean.uniform_()
    return net.eval()


def file_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as save_pretrained writes it: the tied copy left out."""
    return {k: v for k, v in net.state_dict().items() if k != "head.weight"}


def rebuilt(checkpoint: Checkpoint) -> nn.Module:
    with CheckpointReader(checkpoint) as reader:
        payload = reader.payload()
    return NNBackend().rebuild(payload, LoadOptions())


IDS = torch.tensor([[1, 2, 3, 15]]).view(-1)


@pytest.mark.parametrize("form", ["safetensors", "torch"])
def test_rebuilt_model_equals_load_state_dict(tmp_path: Path, form: str) -> None:
    ref = reference()
    if form == "safetensors":
        path = tmp_path / "model.safetensors"
        write_safetensors(path, file_state(ref))
    else:
        path = tmp_path / "model.pt"
        torch.save(ref.state_dict(), path)
    model = rebuilt(Checkpoint(path, Net))
    assert torch.equal(model(IDS), ref(IDS))
    assert model.head.weight is model.embed.weight
    assert isinstance(model.hidden.weight, nn.Parameter) and not model.training
    assert torch.equal(model.scale, ref.scale)  # not in the files: built by the constructor
    assert torch.equal(model.norm.running_mean, ref.norm.running_mean)


def test_dtype_converts_like_to(tmp_path: Path) -> None:
    ref = reference()
    write_safetensors(tmp_path / "model.safetensors", file_state(ref))
    model = rebuilt(Checkpoint(tmp_path, Net, dtype=torch.bfloat16))
    expected = reference().to(torch.bfloat16)
    assert model.hidden.weight.dtype == torch.bfloat16 and model.scale.dtype == torch.bfloat16
    assert model.norm.num_batches_tracked.dtype == torch.int64
    got, want = model.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    assert torch.equal(model(IDS), expected(IDS))


def test_sharded_safetensors_with_index(tmp_path: Path) -> None:
    state = file_state(reference())
    keys = list(state)
    write_safetensors(tmp_path / "a.safetensors", {k: state[k] for k in keys[:3]})
    write_safetensors(tmp_path / "b.safetensors", {k: state[k] for k in keys[3:]})
    weight_map = {k: "a.safetensors" if i < 3 else "b.safetensors" for i, k in enumerate(keys)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(rebuilt(Checkpoint(tmp_path, Net))(IDS), reference()(IDS))


def test_sharded_torch_save_with_index(tmp_path: Path) -> None:
    state = reference().state_dict()
    keys = list(state)
    torch.save({k: state[k] for k in keys[:4]}, tmp_path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in keys[4:]}, tmp_path / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 if i < 4 else 2}-of-00002.bin" for i, k in enumerate(keys)}
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert torch.equal(rebuilt(Checkpoint(tmp_path, Net))(IDS), reference()(IDS))


def test_a_tensor_in_two_shards_is_refused(tmp_path: Path) -> None:
    state = file_state(reference())
    write_safetensors(tmp_path / "a.safetensors", state)
    write_safetensors(tmp_path / "b.safetensors", {"hidden.bias": state["hidden.bias"]})
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "'hidden.bias'", "a.safetensors", "b.safetensors")


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES.values(), key=str))
def test_every_safetensors_dtype_is_read_bit_exact(tmp_path: Path, dtype: torch.dtype) -> None:
    raw = torch.arange(24, dtype=torch.uint8).repeat(dtype.itemsize)[: 6 * dtype.itemsize]
    tensor = raw.view(dtype).reshape(2, 3) if dtype != torch.bool else (raw % 2).bool().reshape(2, 3)
    write_safetensors(tmp_path / "t.safetensors", {"t": tensor, "empty": torch.empty(0, 4, dtype=dtype)})
    with CheckpointFiles(tmp_path / "t.safetensors") as files:
        got = files.tensors["t"].tensor
        assert got.dtype == dtype and got.shape == (2, 3)
        assert torch.equal(got.view(torch.uint8), tensor.view(torch.uint8))
        assert files.tensors["empty"].tensor.shape == (0, 4)


def filesystem_of(path: Path) -> tuple[str, str]:
    """The type and mount point of the filesystem holding ``path`` (the deepest mount in /proc/self/mounts)."""
    target, found = os.path.realpath(path), ("unknown", "")
    with open("/proc/self/mounts") as mounts:
        for _, point, kind, *_ in (line.split() for line in mounts):
            if (target + "/").startswith(point.rstrip("/") + "/") and len(point) >= len(found[1]):
                found = (kind, point)
    return found


@pytest.mark.parametrize("name", ["big.safetensors", "big.pt"])
def test_files_page_cache_is_dropped_on_close_even_with_a_view_alive(tmp_path: Path, name: str) -> None:
    kind, mount_point = filesystem_of(tmp_path)
    if kind in ("tmpfs", "ramfs"):
        pytest.skip(f"{tmp_path} is on {kind} ({mount_point}): POSIX_FADV_DONTNEED drops no page of its files")
    path = tmp_path / name
    weights = torch.arange(1024 * 1024, dtype=torch.float32).view(1024, 1024)
    if name.endswith(".pt"):
        torch.save({"w": weights}, path)
    else:
        write_safetensors(path, {"w": weights})
    files = CheckpointFiles(path)
    view = files.tensors["w"].tensor
    view.sum()  # read every page through the mapping
    assert cached_file_bytes(path) >= 4 * 1024**2
    files.close()
    assert cached_file_bytes(path) < 64 * 1024  # dropped, though `view` still maps the file
    assert torch.equal(view, weights)  # and reads it back from the file


def test_views_keep_their_mapping_alive_after_close(tmp_path: Path) -> None:
    weights = torch.arange(64 * 1024, dtype=torch.float32)  # 256 KiB: stored as a view, never packed
    write_safetensors(tmp_path / "w.safetensors", {"w": weights})
    files = CheckpointFiles(tmp_path / "w.safetensors")
    view = files.tensors["w"].tensor
    files.close()  # a view is alive: the mapping must stay (unmapping it would crash below)
    assert torch.equal(view, weights)


def test_large_converted_tensors_outlive_the_reader(tmp_path: Path) -> None:
    class Big(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(256, 256))

    write_safetensors(tmp_path / "w.safetensors", {"w": torch.ones(256, 256)})
    model = rebuilt(Checkpoint(tmp_path, Big, dtype=torch.bfloat16))  # spooled, then the reader closes
    assert model.w.dtype == torch.bfloat16 and torch.equal(model.w, torch.ones(256, 256, dtype=torch.bfloat16))


def test_parameters_on_meta_keeps_buffers_real() -> None:
    with parameters_on_meta():
        net = Net()
    assert all(p.device.type == "meta" for p in net.parameters())
    assert net.scale.device.type == "cpu" and net.norm.running_mean.device.type == "cpu"
    assert net.head.weight is net.embed.weight
    assert Net().hidden.weight.device.type == "cpu"  # restored afterwards


# --- bad input ---------------------------------------------------------------------------


def expect_error(checkpoint: Checkpoint, error: type[Exception], *needles: str) -> None:
    with pytest.raises(error) as caught:
        rebuilt(checkpoint)
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)


def test_missing_path(tmp_path: Path) -> None:
    expect_error(
        Checkpoint(tmp_path / "nope.safetensors", Net), CheckpointNotFoundError, "nope.safetensors", "does not exist"
    )


def test_directory_without_checkpoint(tmp_path: Path) -> None:
    expect_error(Checkpoint(tmp_path, Net), CheckpointNotFoundError, "holds no checkpoint file")


def test_unexpected_keys_refused_unless_not_strict(tmp_path: Path) -> None:
    state = {**file_state(reference()), "extra.weight": torch.zeros(3)}
    write_safetensors(tmp_path / "m.safetensors", state)
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "'extra.weight' (in m.safetensors)", "strict=False")
    assert torch.equal(rebuilt(Checkpoint(tmp_path, Net, strict=False))(IDS), reference()(IDS))


def test_missing_parameter_is_refused_even_when_not_strict(tmp_path: Path) -> None:
    state = file_state(reference())
    del state["hidden.bias"]
    write_safetensors(tmp_path / "m.safetensors", state)
    for strict in (True, False):
        expect_error(Checkpoint(tmp_path, Net, strict=strict), CheckpointError, "'hidden.bias'", "m.safetensors")


def test_missing_buffer_is_kept_as_built_only_when_not_strict(tmp_path: Path) -> None:
    state = file_state(reference())
    del state["norm.running_var"]
    write_safetensors(tmp_path / "m.safetensors", state)
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "'norm.running_var'")
    assert torch.equal(rebuilt(Checkpoint(tmp_path, Net, strict=False)).norm.running_var, torch.ones(8))


def test_shape_mismatch(tmp_path: Path) -> None:
    state = {**file_state(reference()), "hidden.weight": torch.zeros(8, 4)}
    write_safetensors(tmp_path / "m.safetensors", state)
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "'hidden.weight'", "[8, 4]", "[8, 8]", "m.safetensors")


def test_dtype_mismatch_names_the_fix(tmp_path: Path) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in file_state(reference()).items()}
    write_safetensors(tmp_path / "m.safetensors", state)
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "torch.float16", "dtype=torch.float16")
    model = rebuilt(Checkpoint(tmp_path, Net, dtype=torch.float16))
    assert model.hidden.weight.dtype == torch.float16
    int_state = {**file_state(reference()), "hidden.weight": torch.zeros(8, 8, dtype=torch.int32)}
    write_safetensors(tmp_path / "m.safetensors", int_state)
    expect_error(Checkpoint(tmp_path, Net), CheckpointError, "torch.int32", "do not belong to this model")


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, file_state(reference()))
    path.write_bytes(path.read_bytes()[:-100])
    expect_error(Checkpoint(path, Net), CheckpointError, "m.safetensors", "truncated")


def test_header_size_past_the_end(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    expect_error(Checkpoint(path, Net), CheckpointError, "header is 1000000000 bytes", "truncated or corrupted")


def test_header_offsets_that_do_not_match_the_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    write_safetensors(path, {"w": torch.zeros(4)}, header_extra={})
    raw = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    header["w"]["shape"] = [5]
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + header_len :])
    expect_error(Checkpoint(path, Net), CheckpointError, "'w'", "needs 20 bytes", "corrupted")


def test_index_naming_a_missing_shard(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "a.safetensors", file_state(reference()))
    weight_map = {"embed.weight": "a.safetensors", "hidden.weight": "gone.safetensors"}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expect_error(Checkpoint(tmp_path, Net), CheckpointNotFoundError, "gone.safetensors", "'hidden.weight'")


def test_factory_that_returns_no_module(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "m.safetensors", file_state(reference()))
    expect_error(Checkpoint(tmp_path, lambda: {"not": "a module"}), CheckpointError, "returned a dict", "nn.Module")


def test_pickle_refused_by_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"model": reference()}, path)  # a whole module: pickled code, refused
    expect_error(Checkpoint(path, Net), CheckpointError, "model.pt", "weights_only=True", "Re-save")


def test_file_of_another_kind(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    expect_error(Checkpoint(path, Net), CheckpointError, "weights.npz", ".safetensors")


def test_invalid_options_are_refused_when_described() -> None:
    with pytest.raises(InvalidOptionError, match="floating-point torch.dtype"):
        Checkpoint("x", Net, dtype=torch.int8)
    with pytest.raises(InvalidOptionError, match="not a built module"):
        Checkpoint("x", Net())  # a built module: its weights exist already


def test_transformers_name_without_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(CheckpointError, match=r"pip install transformers"):
        transformers_class("AutoModelForCausalLM")
