"""Reading checkpoint files as tensors that alias the files' pages, never private copies.

A checkpoint on disk is one of: a ``.safetensors`` file; a directory of them, with or
without a ``model.safetensors.index.json`` (the sharded form ``save_pretrained`` writes);
a ``torch.save``'d state dict (``.pt``, ``.pth``, ``.bin``) or a directory with the
sharded ``pytorch_model.bin.index.json``. :class:`CheckpointFiles` opens them:

- safetensors files are parsed here (an 8-byte header length, a JSON header, then the
  raw bytes) and mapped read-only with ``mmap``; each tensor is a view of the mapping;
- ``torch.save``'d files are read with ``torch.load(mmap=True, weights_only=True)``,
  whose tensors are views of a mapping of the file, too.

Quantized tensors (torchao's tensor subclasses) come whole from a ``torch.save``'d file,
their inner tensors views of the file; in safetensors files torchao stores each one as
its inner tensors plus a description in the header's metadata, and they are joined back
(:mod:`ray_zerocopy_core.checkpoint.subclasses`).

Reading such views goes through the page cache, which is shared and reclaimable: the
process's private (anonymous) memory does not grow. :meth:`CheckpointFiles.close`
unmaps everything and asks the kernel to drop the files' cached pages
(``POSIX_FADV_DONTNEED``), so that once the bytes are copied into the object store the
node does not hold them twice.

:class:`ConversionSpool` holds tensors that must be computed rather than mapped (a
dtype conversion, a key conversion that reshapes): each is written to a temporary file
as soon as it is made, so at most one computed tensor is in private memory at a time.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ray_zerocopy_core.checkpoint.subclasses import import_refused_torchao_class, join_flattened_subclasses
from ray_zerocopy_core.errors import CheckpointError, CheckpointNotFoundError
from ray_zerocopy_core.memory import unmap_file_pages
from ray_zerocopy_core.pickling import flatten_subclass, is_flattenable
from ray_zerocopy_core.representation import numel, round_up

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
#: The largest safetensors header (and index file) read: the limit the safetensors format sets.
MAX_JSON_BYTES = 100_000_000

#: safetensors dtype codes (the format's own names) and the torch dtypes they hold.
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "I64": torch.int64,
    "U64": torch.uint64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

#: The torch warning for a tensor made over read-only memory; our views are only read.
_READ_ONLY_WARNING = "The given NumPy array is not writable"


def mapped_bytes(mapping: mmap.mmap, offset: int, nbytes: int) -> torch.Tensor:
    """A uint8 tensor over ``nbytes`` of ``mapping`` at ``offset``, keeping the mapping open while it lives.

    Through numpy, which holds a buffer export: ``mapping.close()`` then refuses
    (``BufferError``) instead of unmapping memory a tensor still points to, as it would
    under ``torch.frombuffer``, which keeps no export.
    """
    array = np.frombuffer(mapping, dtype=np.uint8, count=nbytes, offset=offset)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_READ_ONLY_WARNING, category=UserWarning)
        return torch.from_numpy(array)


@dataclass(frozen=True)
class FileTensor:
    """One tensor of a checkpoint: where it is and a view of its bytes (no copy)."""

    key: str
    path: Path
    tensor: torch.Tensor


# --- where the files are -----------------------------------------------------------------


@dataclass(frozen=True)
class CheckpointLayout:
    """The files a checkpoint path stands for and, when an index names them, the index's map.

    ``weight_map`` maps each tensor name to the shard file that holds it, as the index
    says; :class:`CheckpointFiles` checks the shards against it once they are read.
    """

    paths: list[Path]
    index: Path | None = None
    weight_map: dict[str, str] | None = None


def resolve_files(path: Path) -> list[Path]:
    """The checkpoint files ``path`` stands for, each checked to exist and to be a regular file.

    Raises:
        CheckpointNotFoundError: ``path`` or a shard its index names does not exist, or a
            directory holds no checkpoint file.
        CheckpointError: an index is malformed or names a shard outside its directory, or a
            path is not a regular file (a FIFO or a device would block or never end).
    """
    return locate_files(path).paths


def locate_files(path: Path) -> CheckpointLayout:
    """:func:`resolve_files`, keeping the index and its validated ``weight_map`` when there is one."""
    if not path.exists():
        raise CheckpointNotFoundError(
            f"Checkpoint path {str(path)!r} does not exist. Pass a .safetensors file, a torch.save'd state "
            "dict (.pt/.pth/.bin), or a directory written by save_pretrained."
        )
    if not path.is_dir():
        return CheckpointLayout([_regular_file(path, "Checkpoint path")])
    for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
        index = path / index_name
        if index.exists():
            weight_map = read_index(index)
            shards = [_indexed_shard(index, name, weight_map) for name in dict.fromkeys(weight_map.values())]
            return CheckpointLayout(shards, index, weight_map)
    for pattern in ("*.safetensors", *(f"*{suffix}" for suffix in TORCH_SUFFIXES)):
        found = sorted(path.glob(pattern))
        if found:
            return CheckpointLayout([_regular_file(file, "Checkpoint file") for file in found])
    raise CheckpointNotFoundError(
        f"The directory {str(path)!r} holds no checkpoint file (*.safetensors, {', '.join(TORCH_SUFFIXES)}, "
        f"or an index {SAFETENSORS_INDEX} / {TORCH_INDEX}). Point the Checkpoint at the directory "
        "save_pretrained wrote, or at the weight file itself."
    )


def _regular_file(path: Path, what: str) -> Path:
    """``path`` if it is a regular file (symbolic links followed); reading anything else could block."""
    if not path.is_file():
        raise CheckpointError(
            f"{what} {str(path)!r} is not a regular file (a directory, a FIFO, a device or a socket). "
            "Point the Checkpoint at the weight files, or at the directory that holds them."
        )
    return path


# --- index files -------------------------------------------------------------------------


class _DuplicateKeyError(ValueError):
    """A JSON object names one key twice (raised while parsing, turned into a CheckpointError)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKeyError(f"the key {key!r} appears twice in one JSON object")
        seen[key] = value
    return seen


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Strict JSON, as both formats require: UTF-8, an object at the top, no key twice in any object.

    ``NaN`` and ``Infinity`` (which Python's ``json`` accepts) are refused, as is nesting
    deep enough to exhaust the parser's recursion.

    Raises:
        ValueError: the bytes are not such JSON; the message says why.
    """
    text = raw.decode("utf-8")  # strict: UnicodeDecodeError is a ValueError
    try:
        parsed = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise ValueError("the JSON is nested too deeply to parse") from exc
    if not isinstance(parsed, dict):
        raise ValueError(f"the JSON is a {_json_type(parsed)}, not an object")
    return parsed


def _json_type(value: object) -> str:
    names = {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_index(index: Path) -> dict[str, str]:
    """The ``weight_map`` of an index file (tensor name -> shard file name), every field checked.

    The index must be a JSON object whose ``weight_map`` is a non-empty object of
    string to string, each shard a plain file name (no directory part, no ``..``) with
    the suffix the index kind implies. Other top-level fields (``metadata``) are not read.

    Raises:
        CheckpointError: any of the above does not hold; the message names the index.
    """
    where = f"The checkpoint index {str(index)!r}"
    fix = (
        "It must be JSON with a 'weight_map' of tensor name to shard file, as save_pretrained writes it: "
        "save the model again, or delete the index to read every weight file in the directory."
    )
    _regular_file(index, "The checkpoint index")
    try:
        with open(index, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_JSON_BYTES:
                raise CheckpointError(
                    f"{where} is {size} bytes, more than the {MAX_JSON_BYTES} an index may be: it is not an "
                    f"index. {fix}"
                )
            raw = handle.read(MAX_JSON_BYTES + 1)
        parsed = parse_json_object(raw)
    except (OSError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{where} cannot be read ({type(exc).__name__}: {exc}). {fix}") from exc
    weight_map = parsed.get("weight_map")
    if not isinstance(weight_map, dict):
        got = "no 'weight_map'" if "weight_map" not in parsed else f"a 'weight_map' that is a {_json_type(weight_map)}"
        raise CheckpointError(f"{where} has {got}. {fix}")
    if not weight_map:
        raise CheckpointError(f"{where} has an empty 'weight_map': it names no tensor and no shard. {fix}")
    suffixes = (".safetensors",) if index.name == SAFETENSORS_INDEX else TORCH_SUFFIXES
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{where} maps tensor {key!r} to a {_json_type(shard)} ({shard!r}), not a shard file name. {fix}"
            )
        _check_shard_name(where, key, shard, suffixes)
    return weight_map


def _check_shard_name(where: str, key: str, shard: str, suffixes: tuple[str, ...]) -> None:
    """A shard is a plain file name next to the index: a path could read any file on the machine."""
    if not shard or "/" in shard or "\\" in shard or "\x00" in shard or shard in (".", ".."):
        raise CheckpointError(
            f"{where} maps tensor {key!r} to the shard {shard!r}, which is not a plain file name. Shards must "
            "be files in the index's own directory, named without any directory part ('/', '..' or an absolute "
            "path could make ray-zerocopy read any file on the machine): fix the index or save the model again."
        )
    if not shard.endswith(suffixes):
        raise CheckpointError(
            f"{where} maps tensor {key!r} to the shard {shard!r}, but this kind of index names {' or '.join(suffixes)} "
            "files: the index belongs to another format. Fix the index or save the model again."
        )


def _indexed_shard(index: Path, name: str, weight_map: dict[str, str]) -> Path:
    shard = index.parent / name
    if not shard.exists():
        names = [key for key, value in weight_map.items() if value == name]
        raise CheckpointNotFoundError(
            f"The checkpoint index {str(index)!r} names the shard {name!r} (for {len(names)} tensors, "
            f"e.g. {names[0]!r}), but {str(shard)!r} does not exist. Copy every shard next to the index."
        )
    return _regular_file(shard, f"The shard (named by {index.name})")


def check_index_matches(index: Path, weight_map: dict[str, str], tensors: dict[str, FileTensor]) -> None:
    """Every tensor the index names is in the shard it names, and every tensor of the shards is indexed.

    ``save_pretrained`` lists every tensor of its shards in the index, so a difference
    means the index and the shards come from different saves (or one was edited).

    Raises:
        CheckpointError: the index and the shards disagree; the message lists where.
    """
    problems = []
    for key, name in weight_map.items():
        found = tensors.get(key)
        if found is None:
            problems.append(f"{key!r} is not in {name}")
        elif found.path.name != name:
            problems.append(f"{key!r} is in {found.path.name}, not in {name}")
    problems += [
        f"{key!r} (in {found.path.name}) is not in the index" for key, found in tensors.items() if key not in weight_map
    ]
    if problems:
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise CheckpointError(
            f"The checkpoint index {str(index)!r} does not match its shards: {'; '.join(problems[:5])}{more}. "
            "The index and the shards come from different saves: save the model again, or delete the index to "
            "read every weight file in the directory."
        )


# --- safetensors files -------------------------------------------------------------------


@dataclass(frozen=True)
class HeaderEntry:
    """One tensor as a safetensors header describes it, every field checked."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


#: The fields every safetensors tensor entry has (others are ignored, as the safetensors library ignores them).
_ENTRY_FIELDS = frozenset({"dtype", "shape", "data_offsets"})
#: Strides and sizes are int64 in torch: a shape whose non-zero dimensions multiply past this is refused.
_MAX_ELEMENTS = 2**63 - 1


def parse_safetensors_header(
    path: Path, raw_header: bytes, data_size: int, metadata: dict[str, str] | None = None
) -> list[HeaderEntry]:
    """Check every field of a safetensors header (the JSON bytes) against a data section of ``data_size`` bytes.

    What the format requires is checked before any tensor is made: the header is a
    UTF-8 JSON object, no key twice; ``__metadata__``, if present and not null, maps
    strings to strings; every other entry is an object with ``dtype`` (a known code),
    ``shape`` (non-negative integers) and ``data_offsets`` (two non-negative integers,
    begin <= end) whose byte count is the shape's; the tensors tile the data section
    exactly, without overlaps or gaps, as the format prescribes (a file with bytes no
    tensor owns is not safetensors). Where the safetensors library is lenient and the
    leniency is harmless, so is this reader: other fields of an entry are ignored, and
    whitespace may precede the header's JSON.

    Alignment is not required: a tensor at an address that is not a multiple of its
    item size (files written with an unpadded header, or after an odd-sized ``U8``
    tensor) is read as a view all the same; it is only ever copied (into the object
    store, byte for byte, 64-byte aligned there) or converted by torch's CPU kernels,
    which read unaligned memory correctly.

    ``metadata``, when given, receives the header's ``__metadata__`` entries.

    Raises:
        CheckpointError: a field is missing, of the wrong type or out of range; the
            message names the file, the tensor and the field.
    """
    where = f"The safetensors file {str(path)!r}"
    fix = "The file is corrupted, or is not safetensors: download or save it again."
    try:
        header = parse_json_object(raw_header)
    except ValueError as exc:
        raise CheckpointError(f"{where} has a header that is not valid JSON ({exc}). {fix}") from exc
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            _check_metadata(where, info, fix)
            if metadata is not None and info:
                metadata.update(info)
            continue
        entries.append(_header_entry(where, key, info, data_size, fix))
    entries.sort(key=lambda e: (e.begin, e.end))
    position, previous = 0, None
    for entry in entries:
        if entry.begin < position:  # only after a tensor that ends at position
            assert previous is not None
            raise CheckpointError(
                f"{where}: tensors {_short(previous.key)} (bytes [{previous.begin}, {previous.end})) and "
                f"{_short(entry.key)} (bytes [{entry.begin}, {entry.end})) overlap. {fix}"
            )
        if entry.begin > position:
            raise CheckpointError(
                f"{where}: bytes [{position}, {entry.begin}) of the data section belong to no tensor; the format "
                f"lays tensors out back to back, without gaps. {fix}"
            )
        position, previous = entry.end, entry
    if position != data_size:
        raise CheckpointError(
            f"{where}: its tensors end at byte {position} of the data section, but the data section has "
            f"{data_size} bytes after the header; the format ends the file with the last tensor. {fix}"
        )
    return entries


def _check_metadata(where: str, metadata: Any, fix: str) -> None:
    if metadata is None:  # no metadata, as the safetensors library reads it
        return
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(
            f"{where} has a '__metadata__' that is not an object of string to string ({_short(metadata)}). {fix}"
        )


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (``true`` and ``1.0`` are not)."""
    return type(value) is int and value >= 0


def _header_entry(where: str, key: str, info: Any, data_size: int, fix: str) -> HeaderEntry:
    entry = f"{where}: the header entry of tensor {_short(key)}"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{entry} has a name that is not valid Unicode (a lone surrogate). {fix}") from None
    if not isinstance(info, dict):
        raise CheckpointError(f"{entry} is a {_json_type(info)}, not an object. {fix}")
    if missing_fields := _ENTRY_FIELDS - info.keys():
        missing = ", ".join(sorted(map(repr, missing_fields)))
        raise CheckpointError(f"{entry} lacks {missing}; every entry has 'dtype', 'shape' and 'data_offsets'. {fix}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in SAFETENSORS_DTYPES:
        raise CheckpointError(
            f"{entry} has the dtype {_short(code)}, which is not one ray-zerocopy reads "
            f"({', '.join(SAFETENSORS_DTYPES)}). Save the tensor in one of these dtypes; if the file was "
            "written so, it is corrupted: download or save it again."
        )
    if not isinstance(shape, list) or not all(_is_count(n) for n in shape):
        raise CheckpointError(
            f"{entry} has the shape {_short(shape)}: a shape is a list of non-negative integers. {fix}"
        )
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(n) for n in offsets):
        raise CheckpointError(
            f"{entry} has the data_offsets {_short(offsets)}: they must be two non-negative integers [begin, end]. "
            f"{fix}"
        )
    begin, end = offsets
    if end < begin:
        raise CheckpointError(f"{entry} has the data_offsets [{begin}, {end}], which end before they begin. {fix}")
    dtype = SAFETENSORS_DTYPES[code]
    elements = 1
    for n in shape:  # the non-zero dimensions must fit torch's int64 sizes and strides, even for an empty tensor
        if n:
            elements *= n
            if elements > _MAX_ELEMENTS:
                raise CheckpointError(
                    f"{entry} has the shape {_short(shape)}, larger than any tensor torch can hold. {fix}"
                )
    nbytes = 0 if 0 in shape else elements * dtype.itemsize
    if end - begin != nbytes:
        raise CheckpointError(
            f"{where}: tensor {_short(key)} ({code} {_short(shape)}) needs {nbytes} bytes, but its header gives the "
            f"byte range [{begin}, {end}). The file is corrupted: download or save it again."
        )
    if end > data_size:
        raise CheckpointError(
            f"{where}: tensor {_short(key)} ends at byte {end} of the data section, past its end ({data_size} "
            "bytes). The file is truncated: copy or save it again."
        )
    return HeaderEntry(key, dtype, tuple(shape), begin, end)


def _safetensors_tensors(path: Path, mapping: mmap.mmap, metadata: dict[str, str]) -> Iterator[FileTensor]:
    """Check a safetensors file's header and every size in it, then yield a view of each tensor.

    The header's ``__metadata__`` entries are added to ``metadata``.
    """
    size = len(mapping)
    where = f"The safetensors file {str(path)!r}"
    if size < 8:
        raise CheckpointError(f"{where} is {size} bytes long, too short for a header: truncated, or not safetensors.")
    header_len = int.from_bytes(mapping[:8], "little")
    if header_len > size - 8:
        raise CheckpointError(
            f"{where} says its header is {header_len} bytes, but the file has {size - 8} bytes after the length "
            "field: the file is truncated or corrupted. Copy or save it again."
        )
    if header_len > MAX_JSON_BYTES:
        raise CheckpointError(
            f"{where} says its header is {header_len} bytes, more than the {MAX_JSON_BYTES} the safetensors format "
            "allows: the file is corrupted, or is not safetensors."
        )
    data_start = 8 + header_len
    entries = parse_safetensors_header(path, bytes(mapping[8:data_start]), size - data_start, metadata)
    for entry in entries:
        if entry.end == entry.begin:
            tensor = torch.empty(entry.shape, dtype=entry.dtype)
        else:
            tensor = mapped_bytes(mapping, data_start + entry.begin, entry.end - entry.begin)
            tensor = tensor.view(entry.dtype).reshape(entry.shape)
            check_booleans(where, entry.key, tensor)
        yield FileTensor(entry.key, path, tensor)


def check_booleans(where: str, key: str, tensor: torch.Tensor) -> None:
    """A ``bool`` tensor's bytes are all 0 or 1: torch's kernels assume so, and other values are undefined there.

    Raises:
        CheckpointError: another byte value is found; the file is corrupted or hostile.
    """
    if tensor.dtype != torch.bool or tensor.numel() == 0:
        return
    raw = tensor.view(torch.uint8)
    if int(raw.max()) > 1:
        position = int((raw.reshape(-1) > 1).nonzero()[0])
        raise CheckpointError(
            f"{where}: the boolean tensor {_short(key)} holds the byte {int(raw.reshape(-1)[position])} at element "
            f"{position}; booleans are stored as 0 or 1. The file is corrupted: download or save it again."
        )


# --- torch.save'd files ------------------------------------------------------------------

#: The first bytes of a zip file: torch.save's format since torch 1.6, the only one mmap reads.
_ZIP_MAGIC = b"PK\x03\x04"


def _torch_saved_tensors(path: Path) -> Iterator[FileTensor]:
    """A ``torch.save``'d state dict, mapped (``mmap=True``) and restricted to plain data (``weights_only``)."""
    where = f"The checkpoint file {str(path)!r}"
    with open(path, "rb") as handle:
        magic = handle.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise CheckpointError(
            f"{where} is not in the zip format torch.save has written since torch 1.6 (it starts with "
            f"{magic!r}): it is an older torch.save file, which cannot be mapped, or not a torch.save file at all. "
            "Load it once with torch.load(weights_only=True) and save it again, or convert it to safetensors."
        )
    try:
        loaded = _load_weights_only(path)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where} cannot be read with torch.load(weights_only=True) ({_weights_only_reason(exc)}). It pickles "
            "more than tensors (a whole model, an optimizer, custom classes), or is corrupted. Re-save it as a plain "
            "state dict (torch.save(model.state_dict(), path)) or as safetensors. ray-zerocopy never runs the code "
            "a pickle carries."
        ) from exc
    except Exception as exc:  # torch.load raises whatever its zip reader or unpickler meets in a damaged file
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(
            f"{where} cannot be read by torch.load ({type(exc).__name__}: {reason}): it is truncated or corrupted. "
            "Copy or save it again (torch.save(model.state_dict(), path)), or convert it to safetensors."
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{where} holds a {type(loaded).__qualname__}, not a state dict of tensors. Save model.state_dict() "
            "(not the model, nor a dict of other objects)."
        )
    for key, tensor in loaded.items():
        _check_saved_tensor(where, key, tensor)
    for key, tensor in loaded.items():
        yield FileTensor(key, path, tensor)


def _load_weights_only(path: Path) -> Any:
    """``torch.load(mmap=True, weights_only=True)``, importing torchao's tensor classes it refuses (then allowed)."""
    for _ in range(8):  # one retry per torchao module a file names; a handful at most
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError as exc:
            if not import_refused_torchao_class(str(exc)):
                raise
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)


def _weights_only_reason(exc: pickle.UnpicklingError) -> str:
    """The paragraph of torch's refusal that says what was refused (not its advice to turn the check off)."""
    for paragraph in str(exc).split("\n\n"):
        text = " ".join(paragraph.split())
        if text and not text.startswith(("Weights only load failed", "Check the documentation")):
            return text
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_saved_tensor(where: str, key: Any, tensor: Any) -> None:
    """A state dict entry: a string key and a plain, dense CPU tensor whose values are its bytes.

    A tensor subclass with the traceable-subclass protocol (torchao's quantized tensors,
    which ``weights_only`` loads) passes when each of its inner tensors does. torch itself
    refuses sizes and strides that reach past a tensor's storage while it loads.
    """
    if not isinstance(key, str):
        raise CheckpointError(
            f"{where} holds a dict with the key {_short(key)} ({type(key).__qualname__}); a state dict's keys are "
            "strings. Save model.state_dict()."
        )
    if is_flattenable(tensor):  # a quantized tensor of torchao, say: its inner tensors must pass
        inner, _ = flatten_subclass(tensor)
        for name, part in inner.items():
            _check_saved_tensor(where, f"{key}.{name}", part)
        return
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        raise CheckpointError(
            f"{where} holds a {type(tensor).__qualname__} under {key!r}, not a tensor: it is not a state dict of "
            "tensors. Save model.state_dict() (not the model, nor a dict of other objects)."
        )
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.is_nested or tensor.device.type != "cpu":
        kind = "quantized" if tensor.is_quantized else "nested" if tensor.is_nested else f"{tensor.layout}"
        raise CheckpointError(
            f"{where} holds {key!r} as a {kind} tensor on {tensor.device}; only dense (strided, not quantized) "
            "tensors with their data in the file can be shared. Save the dense weights (tensor.to_dense(), "
            "tensor.dequantize()) and share those."
        )
    check_booleans(where, key, tensor)
    if tensor.is_conj() or tensor.is_neg():
        raise CheckpointError(
            f"{where} holds {key!r} with a pending conjugation or negation (its bytes are not its values). Save "
            "tensor.resolve_conj().resolve_neg() instead."
        )


class CheckpointFiles:
    """The tensors of a checkpoint's files, mapped read-only; :meth:`close` unmaps and drops the cache.

    Use as a context manager::

        with CheckpointFiles(path) as files:
            tensor = files.tensors["layer.weight"].tensor
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        layout = locate_files(Path(path))
        self.paths = layout.paths
        self.tensors: dict[str, FileTensor] = {}
        #: The ``__metadata__`` of the safetensors files, merged (torchao describes its tensors there).
        self.metadata: dict[str, str] = {}
        self._mappings: list[mmap.mmap] = []
        try:
            for file in self.paths:
                for found in self._read(file):
                    if found.key in self.tensors:
                        raise CheckpointError(
                            f"Tensor {found.key!r} is in both {str(self.tensors[found.key].path)!r} and "
                            f"{str(found.path)!r}; a checkpoint must hold each tensor once."
                        )
                    self.tensors[found.key] = found
            if layout.index is not None and layout.weight_map is not None:
                check_index_matches(layout.index, layout.weight_map, self.tensors)
            self.tensors = join_flattened_subclasses(self.tensors, self.metadata)
        except BaseException:
            self.close()
            raise

    def _read(self, file: Path) -> Iterator[FileTensor]:
        if file.suffix == ".safetensors":
            with open(file, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    raise CheckpointError(
                        f"The safetensors file {str(file)!r} is empty: it was not written completely. Copy or save "
                        "it again."
                    )
                mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            self._mappings.append(mapping)
            return _safetensors_tensors(file, mapping, self.metadata)
        if file.suffix in TORCH_SUFFIXES:
            return _torch_saved_tensors(file)
        raise CheckpointError(
            f"{str(file)!r} is not a checkpoint file ray-zerocopy reads: use .safetensors or a torch.save'd "
            f"state dict ({', '.join(TORCH_SUFFIXES)})."
        )

    def close(self) -> None:
        """Drop every view, unmap the files and drop their pages from the page cache.

        A view someone still holds keeps its mapping, but its pages leave this process's
        page tables first, so the page cache can drop them all the same.
        """
        for found in self.tensors.values():
            for part in plain_parts(found.tensor):
                unmap_file_pages(part)
        self.tensors = {}
        for mapping in self._mappings:
            try:
                mapping.close()
            except BufferError:  # someone still holds a view: the mapping goes when it does
                logger.debug("a view of a checkpoint mapping is still alive; it is unmapped later")
        self._mappings = []
        drop_page_cache(self.paths)

    def __enter__(self) -> CheckpointFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def plain_parts(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` itself, or the plain tensors a tensor subclass is made of (flattened recursively)."""
    if not is_flattenable(tensor):
        return [tensor]
    inner, _ = flatten_subclass(tensor)
    return [part for value in inner.values() for part in plain_parts(value)]


def drop_page_cache(paths: list[Path]) -> None:
    """Ask the kernel to drop the cached pages of ``paths`` (those no process maps any more)."""
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fdatasync(fd)  # pages still dirty (a file just written) cannot be dropped
            advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:
            logger.debug("posix_fadvise(DONTNEED) failed for %s: %s", path, exc)
        finally:
            os.close(fd)


class ConversionSpool:
    """Computed tensors written into a temporary file, then mapped back read-only.

    :meth:`add` writes a tensor, converted to a dtype on the way, straight into a
    writable mapping of the file: the converted values go to the page cache (shared,
    reclaimable), never to a private buffer. :meth:`tensors`, called once after the last
    :meth:`add`, maps the file and returns a view per added tensor. The file is removed
    at :meth:`close` (its pages go with it). The directory is ``tempfile.gettempdir()``
    (``TMPDIR``), unless given.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._directory = directory
        self._file: Any = None
        self._layout: list[tuple[int, torch.dtype, tuple[int, ...]]] = []
        self._size = 0
        self._mapping: mmap.mmap | None = None

    def add(self, tensor: torch.Tensor, dtype: torch.dtype | None = None) -> int:
        """Write ``tensor`` (as ``dtype``, its own by default); return its position for :meth:`tensors`."""
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory, prefix="ray-zerocopy-spool-")  # noqa: SIM115
        dtype = dtype or tensor.dtype
        offset = round_up(self._size, mmap.ALLOCATIONGRANULARITY)
        nbytes = tensor.numel() * dtype.itemsize
        self._layout.append((offset, dtype, tuple(tensor.shape)))
        self._size = offset + nbytes
        if nbytes:
            fd = self._file.fileno()
            os.ftruncate(fd, self._size)
            region = mmap.mmap(fd, nbytes, offset=offset)  # shared and writable: the file's pages
            array = np.frombuffer(region, dtype=np.uint8)
            torch.from_numpy(array).view(dtype).view(tensor.shape).copy_(tensor)
            del array  # the last export of the region: it can be closed now
            region.close()
        return len(self._layout) - 1

    def descriptors(self) -> list[int]:
        """The spool file's descriptor, if anything was spooled (for pacing its pages)."""
        return [] if self._file is None else [self._file.fileno()]

    def tensors(self) -> list[torch.Tensor]:
        """Views of every added tensor, in order (maps the file; call once, after the last add)."""
        if self._file is None:
            return []
        if self._size:
            self._mapping = mmap.mmap(self._file.fileno(), self._size, access=mmap.ACCESS_READ)
        views = []
        for offset, dtype, shape in self._layout:
            nbytes = dtype.itemsize * numel(shape)
            if nbytes == 0:
                views.append(torch.empty(shape, dtype=dtype))
                continue
            assert self._mapping is not None
            views.append(mapped_bytes(self._mapping, offset, nbytes).view(dtype).reshape(shape))
        return views

    def close(self) -> None:
        """Unmap and remove the file."""
        if self._mapping is not None:
            try:
                self._mapping.close()
            except BufferError:
                logger.debug("a view of the conversion spool is still alive; it is unmapped later")
            self._mapping = None
        if self._file is not None:
            self._file.close()
            self._file = None
