"""Write protection for weights that alias shared object-store memory.

Every worker on a node maps the same object-store pages, so an in-place write to a
zero-copy weight would change what every other worker sees. After a zero-copy load,
the pages that hold the weights are made read-only in the loading process with
``mprotect``. A write then faults: the process stops with SIGSEGV instead of silently
corrupting its neighbours, and :func:`install_fault_explainer` prints first a line that
names the cause and the fix. The pages are made writable again (in this process only)
when the last tensor over them is released, so Ray can reuse that memory later.

Only Linux has this; elsewhere loads are unprotected and a debug log line says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from ray_zerocopy_core.representation import PAGE_SIZE

logger = logging.getLogger(__name__)

_PROT_READ = 0x1
_PROT_WRITE = 0x2

FAULT_MESSAGE = (
    "ray-zerocopy: this process wrote in place to a model weight that lives in Ray's "
    "shared object store. Those pages are read-only because every worker on the node "
    "shares them, so the write was stopped (SIGSEGV) before it could change them. "
    "Load a private copy with .load(writable=True) to modify weights.\n"
)

_libc: ctypes.CDLL | None = None
_regions_lock = threading.Lock()
_protected: dict[int, int] = {}  # start address -> length, for the fault explainer


def _load_libc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:  # glibc's name first: find_library runs `ldconfig -p` in a subprocess (~2-3 ms per worker)
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
        except OSError:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.mprotect.restype = ctypes.c_int
        libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        libc.madvise.restype = ctypes.c_int
        _libc = libc
    return _libc


_MADV_POPULATE_READ = 22  # Linux 5.14+


def prefault_in_background(start: int, end: int, keep_alive: object) -> threading.Thread | None:
    """Fault pages [start, end) into this process from a daemon thread; return the thread.

    ``madvise(MADV_POPULATE_READ)`` maps every page without copying it; ctypes drops
    the GIL during the call, so the caller goes on while the pages come in.
    ``keep_alive`` (the object owning the memory) is held until the thread is done.
    """
    libc = _load_libc()
    if libc is None or end <= start:
        return None
    start -= start % PAGE_SIZE  # madvise wants a page-aligned start

    def populate() -> None:
        if libc.madvise(start, end - start, _MADV_POPULATE_READ) != 0:
            logger.debug("MADV_POPULATE_READ unavailable (errno %d); pages fault in on use", ctypes.get_errno())
        del holder[:]

    holder = [keep_alive]
    thread = threading.Thread(target=populate, name="ray-zerocopy-prefault", daemon=True)
    thread.start()
    return thread


def protection_supported() -> bool:
    """Whether this platform can make pages read-only (Linux with a usable libc)."""
    return _load_libc() is not None


def _mprotect(start: int, length: int, prot: int) -> None:
    libc = _load_libc()
    assert libc is not None
    if libc.mprotect(start, length, prot) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mprotect failed: {os.strerror(errno)}")


#: (address, size in bytes) of one buffer in memory.
Span = tuple[int, int]


def buffer_spans(buffers: Sequence[np.ndarray]) -> list[Span]:
    """The (address, size) of each buffer, read once (numpy's ``ctypes.data`` is not free)."""
    return [(int(b.ctypes.data), int(b.nbytes)) for b in buffers]


def laid_out_together(spans: Sequence[Span]) -> bool:
    """Whether the buffers lie one after another in one allocation, as Ray writes them.

    Only then is every page between the first and the last buffer theirs alone. Tensor
    tables that were never stored (the driver's own model) are scattered in the heap
    and must not be protected.
    """
    previous_end = None
    for start, size in spans:
        if previous_end is not None and not 0 <= start - previous_end < PAGE_SIZE:
            return False
        previous_end = start + size
    return True


def inner_page_range(spans: Sequence[Span]) -> tuple[int, int]:
    """The page-aligned [start, end) range lying wholly inside the extent of ``spans``."""
    first = min(start for start, _ in spans)
    last = max(start + size for start, size in spans)
    start = -(-first // PAGE_SIZE) * PAGE_SIZE
    end = last // PAGE_SIZE * PAGE_SIZE
    return start, max(start, end)


class ProtectedRegion:
    """Owns a read-only page range; makes it writable again when garbage-collected.

    Tensors built over object-store memory keep this object alive (through their
    base array), so the pages stay protected exactly as long as any such tensor exists.
    """

    def __init__(self, spans: Sequence[Span]) -> None:
        self.start, self.end = inner_page_range(spans)
        self._finalizer: weakref.finalize | None = None
        if self.end > self.start:
            _mprotect(self.start, self.end - self.start, _PROT_READ)
            with _regions_lock:
                _protected[self.start] = self.end - self.start
            self._finalizer = weakref.finalize(self, _unprotect, self.start, self.end)

    @property
    def nbytes(self) -> int:
        """Bytes made read-only."""
        return self.end - self.start


def _unprotect(start: int, end: int) -> None:
    with _regions_lock:
        _protected.pop(start, None)
    try:
        _mprotect(start, end - start, _PROT_READ | _PROT_WRITE)
    except OSError:  # the mapping is already gone: nothing left to restore
        logger.debug("could not restore write access to %#x-%#x", start, end)


def protect(spans: Sequence[Span]) -> ProtectedRegion | None:
    """Make the pages under the buffers at ``spans`` read-only in this process, if possible.

    The buffers must be framed by one-page pads (see ``representation``) and laid out
    together (:func:`laid_out_together`), so that every page protected is theirs alone;
    otherwise nothing is protected. Returns the region (keep it alive as long as the
    memory is used) or ``None`` where nothing was protected.
    """
    if not protection_supported():
        logger.debug("write protection is not available on %s; weights are unprotected", sys.platform)
        return None
    if not laid_out_together(spans):
        logger.debug("buffers are not one stored object; leaving them unprotected")
        return None
    install_fault_explainer()
    return ProtectedRegion(spans)


# --- the fault explainer -------------------------------------------------------------

_explainer_installed = False


class _SigInfo(ctypes.Structure):
    # Linux x86-64 / aarch64 layout of the fields we read: si_signo, si_errno, si_code,
    # padding, then the faulting address.
    _fields_ = [
        ("si_signo", ctypes.c_int),
        ("si_errno", ctypes.c_int),
        ("si_code", ctypes.c_int),
        ("_pad", ctypes.c_int),
        ("si_addr", ctypes.c_void_p),
    ]


def _write_explanation(signum: int, info: ctypes.c_void_p, context: ctypes.c_void_p) -> None:
    """SIGSEGV handler: explain a write into protected weights, then let the fault proceed."""
    try:
        address = ctypes.cast(info, ctypes.POINTER(_SigInfo)).contents.si_addr or 0
        if any(start <= address < start + length for start, length in list(_protected.items())):
            os.write(2, FAULT_MESSAGE.encode())
    finally:
        # Hand SIGSEGV back to the handler that was there before (faulthandler's, or
        # the default); the faulting write then runs again and ends the process.
        _restore_previous_handler()


_HANDLER_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_handler_ref = _HANDLER_TYPE(_write_explanation)


class _SigAction(ctypes.Structure):
    _fields_ = [
        ("sa_handler", ctypes.c_void_p),
        ("sa_mask", ctypes.c_ulong * 16),
        ("sa_flags", ctypes.c_int),
        ("sa_restorer", ctypes.c_void_p),
    ]


_SA_SIGINFO = 0x4
_SA_ONSTACK = 0x08000000
_previous_action = _SigAction()


def _restore_previous_handler() -> None:
    libc = _load_libc()
    if libc is not None:
        libc.sigaction(signal.SIGSEGV, ctypes.byref(_previous_action), None)


def install_fault_explainer() -> None:
    """Install (once per process) the SIGSEGV handler that explains protected writes."""
    global _explainer_installed
    libc = _load_libc()
    if _explainer_installed or libc is None:
        return
    action = _SigAction()
    action.sa_handler = ctypes.cast(_handler_ref, ctypes.c_void_p).value
    action.sa_flags = _SA_SIGINFO | _SA_ONSTACK
    if libc.sigaction(signal.SIGSEGV, ctypes.byref(action), ctypes.byref(_previous_action)) == 0:
        _explainer_installed = True
