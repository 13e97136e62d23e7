"""The SIGSEGV explainer: a line on stderr naming the cause when a write hits shared weights.

Pages of weights that alias the object store are read-only in a loading process
(:mod:`ray_zerocopy_core.memory`), so an in-place write ends that process with
SIGSEGV. This module installs, once per process, a signal handler that writes
:data:`FAULT_MESSAGE` first when the faulting address lies in protected weights.

The handler is a few lines of C (``_fault_explainer.c``, shipped with the package),
compiled on first use with the system C compiler and cached per user. It runs
without Python: a write from a thread that holds no GIL (torch's intra-op threads,
C extensions) cannot deadlock it. Every SIGSEGV then goes on to the handler that was
installed before (Python's faulthandler, or the default), so crashes that have
nothing to do with shared weights, and ``kill -SEGV``, end exactly as before.

Without a C compiler the handler is not installed: a write is still stopped by
SIGSEGV, and a warning said so once when the weights were protected.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

FAULT_MESSAGE = (
    "ray-zerocopy: this process wrote in place to a model weight that lives in Ray's "
    "shared object store. Those pages are read-only because every worker on the node "
    "shares them, so the write was stopped (SIGSEGV) before it could change them. "
    "Load a private copy with .load(writable=True) to modify weights.\n"
)

#: Environment variable naming the folder where the compiled handler is cached.
CACHE_DIR_ENV = "RAY_ZEROCOPY_CACHE_DIR"

_SOURCE = Path(__file__).with_name("_fault_explainer.c")
_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_unavailable: str | None = None  # why the handler could not be installed, once known


def _cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ray-zerocopy"


def _compiled_library() -> Path:
    """The handler's shared object for this source and machine, compiled once per user."""
    source = _SOURCE.read_bytes()
    digest = hashlib.sha256(source + platform.machine().encode()).hexdigest()[:16]
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"ray-zerocopy-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"fault_explainer-{digest}.so"
    if target.exists():
        return target
    with open(folder / "compile.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)  # workers starting together compile it once
        if not target.exists():
            compiler = os.environ.get("CC", "cc")
            partial = folder / f".{target.name}.{os.getpid()}"
            subprocess.run(
                [compiler, "-O2", "-shared", "-fPIC", "-o", str(partial), str(_SOURCE)],
                check=True,
                capture_output=True,
                timeout=60,
            )
            os.replace(partial, target)
    return target


def _load() -> ctypes.CDLL | None:
    """Load (compiling on first use) and install the handler; None, with the reason kept, if impossible."""
    global _library, _unavailable
    with _lock:
        if _library is not None or _unavailable is not None:
            return _library
        if not sys.platform.startswith("linux"):
            _unavailable = f"no fault explainer on {sys.platform}"
            return None
        try:
            library = ctypes.CDLL(str(_compiled_library()))
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            _unavailable = (
                f"the fault explainer could not be compiled ({exc} {detail.decode(errors='replace')})".strip()
            )
            logger.debug(_unavailable)
            return None
        library.rzc_install.argtypes = (ctypes.c_char_p,)
        library.rzc_add_range.argtypes = (ctypes.c_size_t, ctypes.c_size_t)
        library.rzc_remove_range.argtypes = (ctypes.c_size_t,)
        if library.rzc_install(FAULT_MESSAGE.encode()) != 0:
            _unavailable = "sigaction(SIGSEGV) failed"
            return None
        _library = library
        return library


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
