"""The SIGSEGV explainer: a line on stderr naming the cause when a write hits shared weights.

Pages of weights that alias the object store are read-only in a loading process
(:mod:`ray_zerocopy_core.memory`), so an in-place write ends that process with
SIGSEGV. This module installs, once per process, a signal handler that writes
:data:`FAULT_MESSAGE` first when the faulting address lies in protected weights.

The handler is a few lines of C (``_fault_explainer.c``), compiled when the package
is built (``hatch_build.py``: into the wheel, or into the source tree for an editable
install) and loaded with ctypes from :data:`LIBRARY`, inside this package, and from
nowhere else: nothing is compiled at run time, and no cache or temporary folder is
ever searched. It runs without Python: a write from a thread that holds no GIL
(torch's intra-op threads, C extensions) cannot deadlock it. Every SIGSEGV then goes
on to the handler that was installed before (Python's faulthandler, or the default),
so crashes that have nothing to do with shared weights, and ``kill -SEGV``, end
exactly as before.

When the library is missing (installed where no wheel fits and no C compiler was
there) or unusable (corrupt, another architecture, another version), writes are still
stopped by SIGSEGV, only without the message; the first protected load warns once,
naming the reason. Nothing about the library can make a load fail.
"""

from __future__ import annotations

import ctypes
import logging
import struct
import sys
import threading
import warnings
from pathlib import Path

logger = logging.getLogger(__name__)

FAULT_MESSAGE = (
    "ray-zerocopy: this process wrote in place to a model weight that lives in Ray's "
    "shared object store. Those pages are read-only because every worker on the node "
    "shares them, so the write was stopped (SIGSEGV) before it could change them. "
    "Load a private copy with .load(writable=True) to modify weights.\n"
)

#: The compiled handler: the one place it is loaded from.
LIBRARY = Path(__file__).with_name("_fault_explainer.so")
#: The interface the library must report through ``rzc_abi_version()`` (``RZC_ABI_VERSION`` in the C file).
ABI_VERSION = 1

#: The library's functions and their argument types, checked before any is called.
_FUNCTIONS: dict[str, tuple[type, ...]] = {
    "rzc_install": (ctypes.c_char_p,),
    "rzc_add_range": (ctypes.c_size_t, ctypes.c_size_t),
    "rzc_remove_range": (ctypes.c_size_t,),
}

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the handler could not be installed, once known


def _elf_problem(data: bytes) -> str | None:
    """Why ``data`` cannot be a whole shared library for this process, or None.

    dlopen maps each segment the file's program headers name; a segment past the end
    of a truncated file is mapped all the same, and reading it kills the process with
    SIGBUS. So the headers are checked against the file's size before dlopen sees it.
    """
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return "it is not an ELF shared library"
    bits = {1: 32, 2: 64}.get(data[4])
    if bits != 8 * ctypes.sizeof(ctypes.c_void_p):
        return f"it is a {bits}-bit library in a {8 * ctypes.sizeof(ctypes.c_void_p)}-bit process"
    order = {1: "<", 2: ">"}.get(data[5])
    if order != ("<" if sys.byteorder == "little" else ">"):
        return "its byte order is not this machine's"
    (machine,) = struct.unpack_from(f"{order}18xH", data)
    try:
        with open("/proc/self/exe", "rb") as executable:  # this interpreter: an ELF file for this machine
            (here,) = struct.unpack_from(f"{order}18xH", executable.read(20))
    except (OSError, struct.error):
        here = machine  # no way to tell here; dlopen refuses a foreign library all the same
    if machine != here:
        return f"it is built for another architecture (ELF machine {machine}; this process runs on {here})"
    if bits == 64:
        phoff, phentsize, phnum = struct.unpack_from(f"{order}32xQ14xHH", data)
        segment = f"{order}8xQ16xQ"  # p_offset, p_filesz
    else:
        phoff, phentsize, phnum = struct.unpack_from(f"{order}28xI10xHH", data)
        segment = f"{order}4xI8xI"  # p_offset, p_filesz
    if phoff + phnum * phentsize > len(data):
        return f"it is truncated ({len(data)} bytes)"
    for index in range(phnum):
        offset, filesz = struct.unpack_from(segment, data, phoff + index * phentsize)
        if offset + filesz > len(data):
            return f"it is truncated ({len(data)} bytes, a segment ends at byte {offset + filesz})"
    return None


def _open_library(path: Path) -> ctypes.CDLL | str:
    """The handler library at ``path``, checked, with its functions typed; else why it cannot be used."""
    if not path.is_file():
        return (
            f"{path.name} is not in the installed package: it was installed from source "
            "without a C compiler, or on a platform without a ray-zerocopy-core wheel"
        )
    problem = _elf_problem(path.read_bytes())
    if problem is not None:
        return f"{path} could not be loaded: {problem}"
    try:
        library = ctypes.CDLL(str(path))
    except OSError as exc:
        return f"{path} could not be loaded: {exc}"
    try:
        abi_version = library.rzc_abi_version
    except AttributeError:
        return f"{path} is not this release's explainer: it has no rzc_abi_version function"
    abi_version.argtypes = ()
    abi_version.restype = ctypes.c_int
    found = abi_version()
    if found != ABI_VERSION:
        return f"{path} implements explainer interface {found}; this release needs {ABI_VERSION}"
    for name, argtypes in _FUNCTIONS.items():
        try:
            function = getattr(library, name)
        except AttributeError:
            return f"{path} lacks the function {name}"
        function.argtypes = argtypes
        function.restype = ctypes.c_int if name != "rzc_remove_range" else None
    return library


def _warn_unavailable(reason: str) -> None:
    """Say once per process that writes will be stopped without the explanation, and why."""
    message = (
        f"ray-zerocopy: the fault explainer is not available ({reason}). Weights are still "
        "write-protected: an in-place write still stops the process with SIGSEGV, only without "
        "the message naming the cause. To get it, reinstall ray-zerocopy-core from a wheel built "
        "for this platform, or from source where a C compiler (cc, or $CC) is available."
    )
    try:
        warnings.warn(message, RuntimeWarning, stacklevel=4)
    except Warning:  # warnings are errors here: a missing message must not fail the load
        logger.warning(message)


def _load() -> ctypes.CDLL | None:
    """Load and install the handler once; None, with the reason kept (and warned once), if impossible."""
    global _library, _unavailable
    with _lock:
        if _library is not None or _unavailable is not None:
            return _library
        if not sys.platform.startswith("linux"):
            _unavailable = f"no fault explainer on {sys.platform}"
            return None
        try:
            opened = _open_library(LIBRARY)
            if not isinstance(opened, str) and opened.rzc_install(FAULT_MESSAGE.encode()) != 0:
                opened = "sigaction(SIGSEGV) failed"
        except Exception as exc:  # nothing about the explainer may break a load
            opened = f"{LIBRARY} failed: {type(exc).__name__}: {exc}"
        if isinstance(opened, str):
            _unavailable = opened
            _warn_unavailable(opened)
            return None
        _library = opened
        return opened


def install() -> str | None:
    """Install the handler in this process (once; safe from several threads).

    Returns None when it is installed, else the reason it could not be.
    """
    _load()
    return _unavailable


def explain_writes_to(start: int, end: int) -> None:
    """Name the cause of a fault at any address in ``[start, end)`` (a protected range)."""
    library = _load()
    if library is not None and library.rzc_add_range(start, end) != 0:
        logger.debug("fault explainer range table full; %#x-%#x is protected but not explained", start, end)


def forget(start: int) -> None:
    """Stop explaining faults in the range that begins at ``start`` (its pages are writable again)."""
    if _library is not None:
        _library.rzc_remove_range(start)
