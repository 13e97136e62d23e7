"""Corrupted and hostile checkpoint files, generated from fixed seeds: each is refused or read as it describes itself.

Every case ends in one of two ways: a :class:`CheckpointError` that names the file, or a
load whose tensors are exactly what the file describes (checked against an independent
reading of the safetensors format below, or against the tensors that were saved). Any
other exception, a crash or a block fails the test. Pickles that carry code must never
run it: their code would create a marker file.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import pickle
import random
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import ray_zerocopy_core.checkpoint.files as checkpoint_files
from ray_zerocopy_core import Checkpoint
from ray_zerocopy_core.checkpoint.files import SAFETENSORS_DTYPES, CheckpointFiles
from ray_zerocopy_core.checkpoint.reader import CheckpointReader
from ray_zerocopy_core.errors import CheckpointError
from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.options import LoadOptions

CODES = {dtype: code for code, dtype in SAFETENSORS_DTYPES.items()}
#: Cases per seed; four seeds each for header mutations, byte mutations and index mutations.
CASES = 250
SEEDS = range(4)

Described = dict[str, tuple[torch.dtype, tuple[int, ...], bytes]]


@pytest.fixture(autouse=True)
def fast_close(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No page-cache drop on close (an fdatasync per file, which makes thousands of cases slow on a disk).

    The drop is tested in test_checkpoint.py; every check the fuzz exercises runs before it.
    A case that blocks dumps every thread's stack and ends the run rather than hang it.
    """
    monkeypatch.setattr(checkpoint_files, "drop_page_cache", lambda paths: None)
    faulthandler.dump_traceback_later(600, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def tensors() -> dict[str, torch.Tensor]:
    """Every kind of entry: several dtypes, an empty tensor, a scalar, and a float32 after 7 bytes (unaligned)."""
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.randn(3, 4, generator=g),
        "half": torch.randn(5, generator=g).half(),
        "brain": torch.randn(2, 2, generator=g).bfloat16(),
        "steps": torch.arange(2),
        "bytes": torch.arange(7, dtype=torch.uint8),
        "after.bytes": torch.randn(2, generator=g),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }


def raw_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""


def header_and_data(named: dict[str, torch.Tensor]) -> tuple[dict[str, Any], bytes]:
    """A safetensors header (as a dict) and data section for ``named``, laid out in order."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for key, tensor in named.items():
        raw = raw_bytes(tensor)
        header[key] = {
            "dtype": CODES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    return header, data


def assemble(header: bytes, data: bytes, length: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if length is None else length) + header + data


# --- an independent reading of the safetensors format: what a file describes, or None --------


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({key for key, _ in pairs}) != len(pairs):
        raise ValueError("repeated key")
    return dict(pairs)


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _counts(value: Any) -> bool:
    return isinstance(value, list) and all(type(n) is int and n >= 0 for n in value)


def described(raw: bytes) -> Described | None:
    """The tensors a safetensors file holds per the format, or None where the format is broken."""
    if len(raw) < 8:
        return None
    size = int.from_bytes(raw[:8], "little")
    if size > 100_000_000 or 8 + size > len(raw):
        return None
    data = raw[8 + size :]
    try:
        text = raw[8 : 8 + size].decode("utf-8")
        header = json.loads(text, object_pairs_hook=_no_repeats, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    metadata = header.pop("__metadata__", None)
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        return None
    out: Described = {}
    spans = []
    for key, info in header.items():
        if not isinstance(info, dict) or not {"data_offsets", "dtype", "shape"} <= set(info):
            return None
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in SAFETENSORS_DTYPES or not _counts(shape) or not _counts(offsets):
            return None
        if len(offsets) != 2 or math.prod(n for n in shape if n) >= 2**63:
            return None
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return None
        begin, end = offsets
        if end - begin != math.prod(shape) * SAFETENSORS_DTYPES[code].itemsize:
            return None
        if code == "BOOL" and any(byte > 1 for byte in data[begin:end]):
            return None  # torch's booleans are the bytes 0 and 1
        spans.append((begin, end))
        out[key] = (SAFETENSORS_DTYPES[code], tuple(shape), data[begin:end])
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            return None
        position = end
    return out if position == len(data) else None


# --- running a case ---------------------------------------------------------------------------


def read(path: Path, culprit: Path, case: str) -> dict[str, torch.Tensor] | None:
    """The tensors CheckpointFiles reads from ``path`` (copied), or None if it refused naming ``culprit``."""
    try:
        with CheckpointFiles(path) as files:
            return {key: found.tensor.clone() for key, found in files.tensors.items()}
    except CheckpointError as exc:
        assert str(culprit) in str(exc), f"{case}: the error does not name {culprit}: {exc}"
        return None
    except Exception as exc:
        pytest.fail(f"{case}: {type(exc).__name__} escaped instead of a CheckpointError: {exc}")


def check_safetensors_case(path: Path, raw: bytes, case: str) -> bool:
    """Write ``raw``, read it, and compare with what the format says it holds; True if it loaded."""
    path.write_bytes(raw)
    expected = described(raw)
    got = read(path, path, case)
    if expected is None:
        assert got is None, f"{case}: a file the format refuses was read: {sorted(got or {})}"
        return False
    assert got is not None, f"{case}: a valid file was refused"
    assert sorted(got) == sorted(expected), case
    for key, (dtype, shape, data) in expected.items():
        tensor = got[key]
        assert (tensor.dtype, tuple(tensor.shape)) == (dtype, shape), f"{case}: {key}"
        assert raw_bytes(tensor) == data, f"{case}: the bytes of {key}"
    return True


# --- mutations of a safetensors header ------------------------------------------------------


def hostile_value(rng: random.Random) -> Any:
    """A JSON value from those a header field should never hold (and a few it may)."""
    return rng.choice(
        [
            -1, 0, 1, 7, 2**31, 2**63, 2**64, 10**30, -(2**63), 1.0, -0.0, 1e308, True, False, None,
            "", "F32", "I64", "U8", "F8_E8M0", "f32", "x" * 300, [], [0], [1], [-1], [3, 4], [0, 0], [1, 2, 3],
            [2**62, 2**62], [True], [1.0], ["3"], [[1]], [None], [2**64], [0, 2**63], {}, {"a": 1}, {"a": "b"},
        ]
    )  # fmt: skip


def mutate_list(rng: random.Random, value: list[Any]) -> list[Any]:
    value = list(value)
    choice = rng.randrange(6)
    if choice == 0 and value:
        i = rng.randrange(len(value))
        value[i] = rng.choice([value[i] + rng.choice([-2, -1, 1, 2]), -value[i] if type(value[i]) is int else 0])
    elif choice == 1 and value:
        value[rng.randrange(len(value))] = hostile_value(rng)
    elif choice == 2:
        value.insert(rng.randrange(len(value) + 1), rng.choice([0, 1, 2, 4]))
    elif choice == 3 and value:
        value.pop(rng.randrange(len(value)))
    elif choice == 4:
        value.reverse()
    else:
        value = [n * rng.choice([2, 2**32, 2**61]) if type(n) is int else n for n in value]
    return value


def mutate_header(rng: random.Random, header: dict[str, Any]) -> tuple[dict[str, Any] | list[Any], str]:
    """One structural change to a header; returns the new header and a description."""
    header = copy.deepcopy(header)
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    field = rng.choice(["dtype", "shape", "data_offsets"])
    kind = rng.randrange(12)
    if kind == 0:
        header[key][field] = hostile_value(rng)
    elif kind in (1, 2) and field != "dtype":
        header[key][field] = mutate_list(rng, header[key][field])
    elif kind == 3:
        del header[key][field]
    elif kind == 4:
        header[key][rng.choice(["offsets", "name", "extra"])] = hostile_value(rng)
    elif kind == 5:
        header[key]["dtype"] = rng.choice(list(SAFETENSORS_DTYPES))
    elif kind == 6:
        other = rng.choice(keys)
        header[key]["data_offsets"], header[other]["data_offsets"] = (
            header[other]["data_offsets"],
            header[key]["data_offsets"],
        )
    elif kind == 7:
        header[key] = hostile_value(rng)
    elif kind == 8:
        header["__metadata__"] = rng.choice([hostile_value(rng), {"format": 1}, {"format": ["pt"]}, {}, {"a": "b"}])
    elif kind == 9:
        del header[key]
    elif kind == 10:
        return rng.choice([[header], "header", 1, None]), "the header is not an object"  # type: ignore[return-value]
    else:
        del header["__metadata__"]
    return header, f"kind {kind} on {key!r}.{field}"


def serialize(rng: random.Random, header: Any) -> bytes:
    """JSON text for ``header``, sometimes padded (spaces are valid padding, NULs are not)."""
    text = json.dumps(header, separators=rng.choice([(",", ":"), (", ", ": ")])).encode()
    padding = rng.choice([b"", b"", b" " * rng.randrange(1, 9), b"\n\t ", b"\x00" * 3])
    return text + padding


@pytest.mark.parametrize("seed", SEEDS)
def test_header_mutations_are_refused_or_read_as_described(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    header, data = header_and_data(tensors())
    path = tmp_path / "fuzz.safetensors"
    loaded = 0
    for i in range(CASES):
        mutated, what = mutate_header(rng, header)
        body = serialize(rng, mutated)
        length = len(body)
        if rng.random() < 0.1:
            length = rng.choice([0, 1, length - 1, length + 1, length + 8, 2**63, 2**64 - 1, 100_000_001])
        case = f"seed {seed}, case {i}: {what}, header length {length}"
        loaded += check_safetensors_case(path, assemble(body, data, length), case)
    assert 0 < loaded < CASES  # both outcomes met: the mutations are neither all harmless nor all fatal


@pytest.mark.parametrize("seed", SEEDS)
def test_flipped_inserted_and_cut_bytes_are_refused_or_read_as_described(tmp_path: Path, seed: int) -> None:
    rng = random.Random(1000 + seed)
    header, data = header_and_data(tensors())
    original = assemble(json.dumps(header).encode(), data)
    header_end = 8 + len(json.dumps(header).encode())
    path = tmp_path / "fuzz.safetensors"
    outcomes = {True: 0, False: 0}
    for i in range(CASES):
        raw = bytearray(original)
        kind = rng.randrange(5)
        if kind == 0:  # a byte of the header changed
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(8, header_end)] = rng.randrange(256)
        elif kind == 1:  # a byte of the data changed: still valid, and read as it now is
            raw[rng.randrange(header_end, len(raw))] ^= 1 << rng.randrange(8)
        elif kind == 2:  # cut anywhere
            raw = raw[: rng.randrange(len(raw))]
        elif kind == 3:  # a byte inserted or removed in the header, its length field unchanged
            at = rng.randrange(8, header_end)
            raw[at:at] = bytes([rng.randrange(256)]) if rng.random() < 0.5 else b""
            if rng.random() < 0.5:
                del raw[at]
        else:  # a byte of the length field changed
            raw[rng.randrange(8)] = rng.randrange(256)
        outcome = check_safetensors_case(path, bytes(raw), f"seed {seed}, case {i}: kind {kind}")
        outcomes[outcome] += 1
        if kind == 2:
            assert not outcome, f"seed {seed}, case {i}: a cut file was read"
    assert outcomes[True] and outcomes[False]


SPECIAL_HEADERS = {
    "repeated tensor": b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
    b'"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
    "repeated field": b'{"a": {"dtype": "U8", "dtype": "I8", "shape": [2], "data_offsets": [0, 2]}}',
    "repeated metadata key": b'{"__metadata__": {"k": "1", "k": "2"}, "a": {"dtype": "U8", "shape": [2], '
    b'"data_offsets": [0, 2]}}',
    "NaN": b'{"a": {"dtype": "U8", "shape": [NaN], "data_offsets": [0, 2]}}',
    "Infinity": b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, Infinity]}}',
    "a 5000-digit number": b'{"a": {"dtype": "U8", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 2]}}',
    "nesting 100000 deep": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "a lone surrogate": b'{"\\ud800": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}',
    "not UTF-8": b'{"\xff": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}',
    "UTF-16": '{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}'.encode("utf-16"),
    "valid, with whitespace before and after": b' \n{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}\t ',
    "valid, with an unknown field and null metadata": b'{"__metadata__": null, "a": {"dtype": "U8", "shape": [2], '
    b'"data_offsets": [0, 2], "note": [1]}}',
    "a missing field": b'{"a": {"dtype": "U8", "data_offsets": [0, 2]}}',
    "a gap": b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
    "overlap": b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, '
    b'"b": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
    "an empty tensor inside another": b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, '
    b'"b": {"dtype": "U8", "shape": [0], "data_offsets": [1, 1]}}',
    "a trailing byte": b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}',
    "a boolean dimension": b'{"a": {"dtype": "U8", "shape": [true, 2], "data_offsets": [0, 2]}}',
    "a float offset": b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2.0]}}',
    "a negative dimension": b'{"a": {"dtype": "U8", "shape": [-1, -2], "data_offsets": [0, 2]}}',
    "an empty tensor too large for torch": b'{"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}, '
    b'"b": {"dtype": "F32", "shape": [0, 4294967296, 4294967296], "data_offsets": [2, 2]}}',
    "valid, with an empty tensor and metadata": b'{"__metadata__": {"k": "v"}, "a": {"dtype": "U8", "shape": [2], '
    b'"data_offsets": [0, 2]}, "b": {"dtype": "F32", "shape": [0, 9223372036854775807], "data_offsets": [2, 2]}}',
}


@pytest.mark.parametrize("name", list(SPECIAL_HEADERS))
def test_special_headers(tmp_path: Path, name: str) -> None:
    raw = assemble(SPECIAL_HEADERS[name], b"\x01\x02")
    loaded = check_safetensors_case(tmp_path / "special.safetensors", raw, name)
    assert loaded == name.startswith("valid"), name


def test_negative_dimension_and_index_weight_map_escapes_named_by_the_issue(tmp_path: Path) -> None:
    """The two raw exceptions issue 23 found: torch's RuntimeError and an AttributeError."""
    path = tmp_path / "negative.safetensors"
    path.write_bytes(assemble(SPECIAL_HEADERS["a negative dimension"], b"\x01\x02"))
    with pytest.raises(CheckpointError, match=r"negative\.safetensors.*shape \[-1, -2\].*non-negative integers"):
        CheckpointFiles(path)
    directory = tmp_path / "sharded"
    directory.mkdir()
    (directory / "model.safetensors.index.json").write_text('{"weight_map": ["a.safetensors"]}')
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*'weight_map' that is a list"):
        CheckpointFiles(directory)


def test_headers_and_indexes_over_the_size_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The format's 100 MB limit, lowered so that a small file crosses it."""
    monkeypatch.setattr(checkpoint_files, "MAX_JSON_BYTES", 64)
    path = tmp_path / "long.safetensors"
    path.write_bytes(assemble(SPECIAL_HEADERS["valid, with an empty tensor and metadata"], b"\x01\x02"))
    with pytest.raises(CheckpointError, match=r"long\.safetensors' says its header is \d+ bytes, more than the 64"):
        CheckpointFiles(path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "long.safetensors"}}) + " " * 64
    )
    with pytest.raises(CheckpointError, match=r"index\.json' is \d+ bytes, more than the 64"):
        CheckpointFiles(tmp_path)


# --- garbage under every suffix -------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth", ".bin"])
def test_garbage_under_each_suffix_is_refused(tmp_path: Path, suffix: str) -> None:
    rng = random.Random(suffix)
    path = tmp_path / f"garbage{suffix}"
    for i in range(60):
        length = rng.choice([1, 2, 7, 8, 9, 64, 1000, 70_000])
        prefix = rng.choice([b"", b"", b"PK\x03\x04", struct.pack("<Q", length) + b"{", b"\x80\x02"])
        path.write_bytes(prefix + rng.randbytes(length))
        assert read(path, path, f"{suffix} case {i}") is None, f"{suffix} case {i}: garbage was read"
    path.write_bytes(b"")
    assert read(path, path, "empty file") is None


# --- torch.save'd files -------------------------------------------------------------------


def saved_state() -> dict[str, torch.Tensor]:
    return {k: v for k, v in tensors().items() if k != "scalar"} | {"transposed": torch.randn(3, 2).t()}


def test_cut_and_flipped_torch_save_files(tmp_path: Path) -> None:
    rng = random.Random(7)
    state = saved_state()
    source = tmp_path / "source.pt"
    torch.save(state, source)
    original = source.read_bytes()
    path = tmp_path / "fuzz.pt"
    outcomes = {True: 0, False: 0}
    for i in range(150):
        raw = bytearray(original)
        cut = i % 3 == 0
        if cut:
            raw = raw[: rng.randrange(len(raw))]
        else:
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(raw)
        got = read(path, path, f"case {i}")
        outcomes[got is not None] += 1
        if cut:
            assert got is None, f"case {i}: a cut torch.save file was read"
        elif got is not None:  # a flip torch does not notice (in tensor bytes, say): still a plain state dict
            assert all(type(t) is torch.Tensor and t.layout == torch.strided for t in got.values()), f"case {i}"
    assert outcomes[True] and outcomes[False]


def test_torch_save_variants_that_are_state_dicts_load_exactly(tmp_path: Path) -> None:
    state = saved_state()
    for name, saved in {
        "plain": state,
        "parameters": {k: torch.nn.Parameter(v, requires_grad=False) for k, v in state.items()},
        "wrapped": {"state_dict": state, "epoch": 3},
    }.items():
        path = tmp_path / f"{name}.pt"
        torch.save(saved, path)
        got = read(path, path, name)
        assert got is not None and sorted(got) == sorted(state), name
        for key, tensor in state.items():
            assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), f"{name}: {key}"


LOADABLE_BUT_NOT_STATE_DICTS: dict[str, Callable[[], Any]] = {
    "a tensor": lambda: torch.zeros(3),
    "a list": lambda: [torch.zeros(3)],
    "an int key": lambda: {1: torch.zeros(3)},
    "a nested dict": lambda: {"layer": {"w": torch.zeros(3)}},
    "a string value": lambda: {"w": "weights"},
    "a sparse tensor": lambda: {"w": torch.eye(3).to_sparse()},
    "a CSR tensor": lambda: {"w": torch.eye(3).to_sparse_csr()},
    "a quantized tensor": lambda: {"w": torch.quantize_per_tensor(torch.rand(3), 0.1, 0, torch.quint8)},
    "a meta tensor": lambda: {"w": torch.empty(3, device="meta")},
    "a nested tensor": lambda: {"w": torch.nested.nested_tensor([torch.rand(2), torch.rand(3)])},
    "a conjugated view": lambda: {"w": torch.rand(3, dtype=torch.complex64).conj()},
    "a bad state_dict": lambda: {"state_dict": {"w": 1.0}},
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # sparse, quantized and nested tensors warn when made
@pytest.mark.parametrize("name", list(LOADABLE_BUT_NOT_STATE_DICTS))
def test_what_weights_only_loads_but_is_no_state_dict_is_refused(tmp_path: Path, name: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(LOADABLE_BUT_NOT_STATE_DICTS[name](), path)
    assert read(path, path, name) is None


def test_booleans_other_than_0_and_1_are_refused_in_both_formats(tmp_path: Path) -> None:
    """torch assumes a bool's byte is 0 or 1; a file can hold any byte there."""
    path = tmp_path / "mask.safetensors"
    path.write_bytes(assemble(b'{"m": {"dtype": "BOOL", "shape": [3], "data_offsets": [0, 3]}}', b"\x01\x00\x02"))
    with pytest.raises(CheckpointError, match=r"mask\.safetensors.*'m' holds the byte 2 at element 2"):
        CheckpointFiles(path)
    path = tmp_path / "mask.pt"
    torch.save({"m": torch.tensor([1, 0, 2], dtype=torch.uint8)}, path)
    raw = path.read_bytes()
    assert raw.count(b"ByteStorage") == 1
    path.write_bytes(raw.replace(b"ByteStorage", b"BoolStorage"))  # the same bytes, now read as booleans
    with pytest.raises(CheckpointError, match=r"mask\.pt.*'m' holds the byte 2 at element 2"):
        CheckpointFiles(path)


class Payload:
    """A pickle that carries code: unpickling it calls ``open(marker, "w")``, which creates the marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def zip_with_pickle(source: Path, target: Path, pickled: bytes) -> None:
    """``source`` (a torch.save zip) with its ``data.pkl`` replaced."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for name in old.namelist():
            new.writestr(name, pickled if name.endswith("data.pkl") else old.read(name))


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_pickles_that_carry_code_never_run_it(tmp_path: Path, suffix: str) -> None:
    marker = tmp_path / "code-ran"
    files = tmp_path / "files"
    files.mkdir()
    payload = Payload(marker)
    torch.save({"w": torch.zeros(2), "hook": payload}, files / f"in-a-dict{suffix}")
    torch.save({"state_dict": {"w": payload}}, files / f"in-a-state-dict{suffix}")
    torch.save(payload, files / f"alone{suffix}")
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (files / f"raw-pickle-{protocol}{suffix}").write_bytes(pickle.dumps({"w": payload}, protocol=protocol))
    torch.save({"w": torch.zeros(2)}, tmp_path / "plain.pt")
    zip_with_pickle(tmp_path / "plain.pt", files / f"zip-with-code{suffix}", pickle.dumps(payload, protocol=2))
    for path in sorted(files.iterdir()):
        assert read(path, path, path.name) is None, f"{path.name} was read"
        assert not marker.exists(), f"{path.name}: the pickled code ran"
    # the same through an index naming a hostile shard, and through the reader a Checkpoint uses
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    shard = f"pytorch_model-00001-of-00001{suffix}"
    (sharded / shard).write_bytes((files / f"in-a-dict{suffix}").read_bytes())
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"w": shard, "hook": shard}}))
    with pytest.raises(CheckpointError, match=shard):
        CheckpointReader(Checkpoint(sharded, lambda: torch.nn.Linear(2, 1)))
    assert not marker.exists()


# --- index files --------------------------------------------------------------------------


def sharded_directory(root: Path) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """Two shards and their index, as save_pretrained lays them out; and a valid file outside the directory."""
    directory = root / "checkpoint"
    directory.mkdir()
    state = tensors()
    keys = list(state)
    weight_map = {}
    for shard, part in (("model-00001-of-00002.safetensors", keys[:4]), ("model-00002-of-00002.safetensors", keys[4:])):
        header, data = header_and_data({k: state[k] for k in part})
        (directory / shard).write_bytes(assemble(json.dumps(header).encode(), data))
        weight_map |= dict.fromkeys(part, shard)
    header, data = header_and_data({"outside": torch.zeros(2)})
    (root / "outside.safetensors").write_bytes(assemble(json.dumps(header).encode(), data))
    return directory, state, weight_map


def hostile_shard_name(rng: random.Random, root: Path) -> str:
    return rng.choice(
        [
            str(root / "outside.safetensors"), "../outside.safetensors", "/etc/passwd", "checkpoint/../x.safetensors",
            "sub/model.safetensors", "", ".", "..", "model-00001-of-00002.safetensors\x00", "C:\\model.safetensors",
            "missing.safetensors", "model-00001-of-00002.bin", "model-00002-of-00002.safetensors",
        ]
    )  # fmt: skip


def mutate_index(rng: random.Random, weight_map: dict[str, str], root: Path) -> tuple[bytes, bool, str]:
    """An index file's bytes, whether it still describes the shards exactly, and a description."""
    index: dict[str, Any] = {"metadata": {"total_size": 123}, "weight_map": dict(weight_map)}
    keys = list(weight_map)
    key = rng.choice(keys)
    kind = rng.randrange(12)
    valid = False
    if kind == 0:
        index["weight_map"] = hostile_value(rng)
    elif kind == 1:
        index["weight_map"][key] = hostile_value(rng)
    elif kind == 2:
        name = hostile_shard_name(rng, root)
        valid = name == weight_map[key]
        index["weight_map"][key] = name
    elif kind == 3:
        del index["weight_map"][key]
    elif kind == 4:
        index["weight_map"]["not.in.the.shards"] = weight_map[key]
    elif kind == 5:
        del index["weight_map"]
    elif kind == 6:  # fields the reader does not use, and another order: still valid
        index = {"weight_map": dict(reversed(list(weight_map.items()))), "metadata": hostile_value(rng), "x": []}
        valid = True
    elif kind == 7:
        text = json.dumps(index).replace(json.dumps(keys[0]), json.dumps(keys[1]), 1)  # a key twice
        return text.encode(), False, f"kind {kind}"
    elif kind == 8:
        return rng.randbytes(rng.randrange(1, 200)), False, f"kind {kind}"
    elif kind == 9:
        text = json.dumps(index).encode()
        return text[: rng.randrange(len(text))], False, f"kind {kind}"
    elif kind == 10:
        text = bytearray(json.dumps(index).encode())
        text[rng.randrange(len(text))] = rng.randrange(256)
        return bytes(text), None, f"kind {kind} (either)"  # type: ignore[return-value]
    else:
        return json.dumps(rng.choice([[index], "index", 3, None])).encode(), False, f"kind {kind}"
    return json.dumps(index).encode(), valid, f"kind {kind} on {key!r}"


@pytest.mark.parametrize("seed", SEEDS)
def test_index_mutations_are_refused_or_read_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(2000 + seed)
    directory, state, weight_map = sharded_directory(tmp_path)
    index = directory / "model.safetensors.index.json"
    outcomes = {True: 0, False: 0}
    for i in range(CASES // 2):
        raw, valid, what = mutate_index(rng, weight_map, tmp_path)
        index.write_bytes(raw)
        case = f"seed {seed}, case {i}: {what}"
        got = read(directory, index, case)
        outcomes[got is not None] += 1
        if valid is not None:
            assert (got is not None) == valid, f"{case}: {'refused' if valid else 'read'}"
        if got is not None:
            assert sorted(got) == sorted(state), case
            for key, tensor in state.items():
                assert raw_bytes(got[key]) == raw_bytes(tensor), f"{case}: {key}"
    assert outcomes[True] and outcomes[False]


@pytest.mark.parametrize(
    "name", ["absolute", "dot-dot", "dot-dot inside", "a subdirectory", "a symbolic link"], ids=lambda n: n
)
def test_index_shards_outside_the_directory_are_refused_even_when_they_exist(tmp_path: Path, name: str) -> None:
    directory, _, weight_map = sharded_directory(tmp_path)
    (directory / "sub").mkdir()
    (directory / "sub" / "outside.safetensors").write_bytes((tmp_path / "outside.safetensors").read_bytes())
    shard = {
        "absolute": str(tmp_path / "outside.safetensors"),
        "dot-dot": "../outside.safetensors",
        "dot-dot inside": "sub/../../outside.safetensors",
        "a subdirectory": "sub/outside.safetensors",
        "a symbolic link": "link.safetensors",
    }[name]
    (directory / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    index = directory / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {**weight_map, "outside": shard}}))
    got = read(directory, index, name)
    if name == "a symbolic link":  # followed, as Hugging Face's cache lays shards out (links into blobs/)
        assert got is not None and torch.equal(got["outside"], torch.zeros(2))
    else:
        assert got is None
        with pytest.raises(CheckpointError, match="not a plain file name"):
            CheckpointFiles(directory)


def refuses_without_blocking(target: Callable[[], Any], fifo: Path) -> bool:
    """Whether ``target`` raises a CheckpointError within a while; a reader blocked on ``fifo`` is let go after it."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():  # open a writer so that the blocked open() returns, and the thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(20)
        return False
    assert raised and isinstance(raised[0], CheckpointError), raised
    return True


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
@pytest.mark.parametrize("name", ["model.safetensors", "model.pt", "model.safetensors.index.json", "shard"])
def test_special_files_are_refused_without_blocking(tmp_path: Path, name: str) -> None:
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    if name == "shard":
        fifo = directory / "model-00001-of-00001.safetensors"
        (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": fifo.name}}))
    else:
        fifo = directory / name
    os.mkfifo(fifo)
    assert refuses_without_blocking(lambda: CheckpointFiles(directory), fifo), f"reading a FIFO named {name} blocked"
    if name != "shard" and not name.endswith(".json"):
        assert refuses_without_blocking(lambda: CheckpointFiles(fifo), fifo), f"reading the FIFO {name} itself blocked"


# --- alignment: unaligned tensors are read as views, and converted correctly -------------------


def test_unaligned_tensors_are_read_and_converted_exactly(tmp_path: Path) -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("bytes", torch.zeros(7, dtype=torch.uint8))
            self.w = torch.nn.Parameter(torch.zeros(3, 4))

    state = {"bytes": torch.arange(7, dtype=torch.uint8), "w": torch.randn(3, 4)}
    header, data = header_and_data(state)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)  # padded as safetensors' own writer pads: w still starts 7 bytes in
    path = tmp_path / "odd.safetensors"
    path.write_bytes(assemble(body, data))
    with CheckpointFiles(path) as files:
        assert files.tensors["w"].tensor.data_ptr() % 4 != 0  # really unaligned
        assert torch.equal(files.tensors["w"].tensor, state["w"])
    for dtype in (None, torch.bfloat16, torch.float64):  # conversions read the unaligned floats
        with CheckpointReader(Checkpoint(path, Odd, dtype=dtype)) as reader:
            payload = reader.payload()
        model = NNBackend().rebuild(payload, LoadOptions())
        assert torch.equal(model.w, state["w"].to(dtype or torch.float32)), dtype
        assert torch.equal(model.bytes, state["bytes"])
