"""Reading checkpoint files as tensors that alias the files' pages, never private copies.

A checkpoint on disk is one of: a ``.safetensors`` file; a directory of them, with or
without a ``model.safetensors.index.json`` (the sharded form ``save_pretrained`` writes);
a ``torch.save``'d state dict (``.pt``, ``.pth``, ``.bin``) or a directory with the
sharded ``pytorch_model.bin.index.json``. :class:`CheckpointFiles` opens them:

- safetensors files are parsed here (an 8-byte header length, a JSON header, then the
  raw bytes) and mapped read-only with ``mmap``; each tensor is a view of the mapping;
- ``torch.save``'d files are read with ``torch.load(mmap=True, weights_only=True)``,
  whose tensors are views of a mapping of the file, too.

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

import contextlib
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

from ray_zerocopy_core.errors import CheckpointError, CheckpointNotFoundError
from ray_zerocopy_core.memory import unmap_file_pages

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
TORCH_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")

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


def resolve_files(path: Path) -> list[Path]:
    """The checkpoint files ``path`` stands for, each checked to exist.

    Raises:
        CheckpointNotFoundError: ``path`` or a shard its index names does not exist, or a
            directory holds no checkpoint file.
    """
    if not path.exists():
        raise CheckpointNotFoundError(
            f"Checkpoint path {str(path)!r} does not exist. Pass a .safetensors file, a torch.save'd state "
            "dict (.pt/.pth/.bin), or a directory written by save_pretrained."
        )
    if path.is_file():
        return [path]
    for index_name in (SAFETENSORS_INDEX, TORCH_INDEX):
        index = path / index_name
        if index.exists():
            return _indexed_shards(index)
    for pattern in ("*.safetensors", *(f"*{suffix}" for suffix in TORCH_SUFFIXES)):
        found = sorted(path.glob(pattern))
        if found:
            return found
    raise CheckpointNotFoundError(
        f"The directory {str(path)!r} holds no checkpoint file (*.safetensors, {', '.join(TORCH_SUFFIXES)}, "
        f"or an index {SAFETENSORS_INDEX} / {TORCH_INDEX}). Point the Checkpoint at the directory "
        "save_pretrained wrote, or at the weight file itself."
    )


def _indexed_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"The checkpoint index {str(index)!r} cannot be read ({type(exc).__name__}: {exc}); it must be "
            "JSON with a 'weight_map' of tensor name to shard file, as save_pretrained writes it."
        ) from exc
    shards = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    for shard in shards:
        if not shard.is_file():
            names = [key for key, value in weight_map.items() if index.parent / value == shard]
            raise CheckpointNotFoundError(
                f"The checkpoint index {str(index)!r} names the shard {shard.name!r} (for {len(names)} tensors, "
                f"e.g. {names[0]!r}), but {str(shard)!r} does not exist. Copy every shard next to the index."
            )
    return shards


def _safetensors_tensors(path: Path, mapping: mmap.mmap) -> Iterator[FileTensor]:
    """Parse a safetensors header and yield a view of each tensor; check every size first."""
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
    try:
        header = json.loads(bytes(mapping[8 : 8 + header_len]))
    except ValueError as exc:
        raise CheckpointError(f"{where} has a header that is not JSON ({exc}): corrupted, or not safetensors.") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{where} has a header that is not a JSON object: corrupted or not safetensors.")
    data_start = 8 + header_len
    entries = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(n) for n in info["shape"])
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{where}: the header entry of tensor {key!r} is not understood ({type(exc).__name__}: {exc})."
            ) from exc
        numel = 1
        for n in shape:
            numel *= n
        if end - begin != numel * dtype.itemsize or begin < 0 or end < begin:
            raise CheckpointError(
                f"{where}: tensor {key!r} ({info['dtype']} {list(shape)}) needs {numel * dtype.itemsize} bytes, "
                f"but its header gives the byte range [{begin}, {end}). The file is corrupted."
            )
        if data_start + end > size:
            raise CheckpointError(
                f"{where}: tensor {key!r} ends at byte {data_start + end}, past the end of the file ({size} bytes). "
                "The file is truncated: copy or save it again."
            )
        entries.append((key, dtype, shape, data_start + begin, end - begin))
    for key, dtype, shape, offset, nbytes in entries:
        if nbytes == 0:
            tensor = torch.empty(shape, dtype=dtype)
        else:
            tensor = mapped_bytes(mapping, offset, nbytes).view(dtype).reshape(shape)
        yield FileTensor(key, path, tensor)


def _torch_saved_tensors(path: Path) -> Iterator[FileTensor]:
    """A ``torch.save``'d state dict, mapped (``mmap=True``) and restricted to plain data (``weights_only``)."""
    where = f"The checkpoint file {str(path)!r}"
    try:
        loaded = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{where} cannot be read with torch.load(weights_only=True): it pickles more than tensors "
            f"({str(exc).splitlines()[0]}). Re-save it as a plain state dict (torch.save(model.state_dict(), path)) "
            "or as safetensors; ray-zerocopy never runs the code a pickle carries."
        ) from exc
    except RuntimeError as exc:
        raise CheckpointError(
            f"{where} cannot be mapped by torch.load(mmap=True) ({exc}). Only the zip format torch.save has "
            "written since torch 1.6 can be mapped: load it once and re-save it, or convert it to safetensors."
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        kind = type(loaded).__qualname__
        raise CheckpointError(
            f"{where} holds a {kind}, not a state dict of tensors. Save model.state_dict() (not the model, "
            "nor a dict of other objects)."
        )
    for key, tensor in loaded.items():
        yield FileTensor(str(key), path, tensor)


class CheckpointFiles:
    """The tensors of a checkpoint's files, mapped read-only; :meth:`close` unmaps and drops the cache.

    Use as a context manager::

        with CheckpointFiles(path) as files:
            tensor = files.tensors["layer.weight"].tensor
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.paths = resolve_files(Path(path))
        self.tensors: dict[str, FileTensor] = {}
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
        except BaseException:
            self.close()
            raise

    def _read(self, file: Path) -> Iterator[FileTensor]:
        if file.suffix == ".safetensors":
            with open(file, "rb") as handle:
                if os.fstat(handle.fileno()).st_size == 0:
                    raise CheckpointError(f"The safetensors file {str(file)!r} is empty.")
                mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            with contextlib.suppress(AttributeError, OSError):  # start reading the file ahead, in the kernel
                mapping.madvise(mmap.MADV_WILLNEED)
            self._mappings.append(mapping)
            return _safetensors_tensors(file, mapping)
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
            unmap_file_pages(found.tensor)
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
        offset = -(-self._size // mmap.ALLOCATIONGRANULARITY) * mmap.ALLOCATIONGRANULARITY
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

    def tensors(self) -> list[torch.Tensor]:
        """Views of every added tensor, in order (maps the file; call once, after the last add)."""
        if self._file is None:
            return []
        if self._size:
            self._mapping = mmap.mmap(self._file.fileno(), self._size, access=mmap.ACCESS_READ)
        views = []
        for offset, dtype, shape in self._layout:
            nbytes = dtype.itemsize
            for n in shape:
                nbytes *= n
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
