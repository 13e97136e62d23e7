"""Mapping, write protection and the fault explainer, on tables laid out in shared memory as Ray does (no Ray)."""

from __future__ import annotations

import gc
import mmap
import subprocess
import sys
import textwrap
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from shm_tables import MIB, shm_size, stored_in_shared_memory, weights_table

from ray_zerocopy_core import memory
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.plugin import LoadOptions
from ray_zerocopy_core.representation import TableChunk

pytestmark = pytest.mark.skipif(not memory.protection_supported(), reason="needs Linux mprotect")
HERE = Path(__file__).parent


def writable(address: int) -> bool:
    """Whether this process may write the page at ``address`` (from /proc/self/maps)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, perms = line.split()[:2]
            low, high = (int(x, 16) for x in span.split("-"))
            if low <= address < high:
                return perms[1] == "w"
    raise AssertionError(f"{address:#x} is not mapped")


@pytest.mark.parametrize("page_size", [mmap.PAGESIZE, 64 * 1024])  # this system's; aarch64 kernels with 64 KiB pages
def test_every_weight_byte_is_on_a_read_only_page_of_its_own_object(
    page_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "PAGE_SIZE", page_size)
    monkeypatch.setattr(memory, "GUARD_BYTES", max(page_size, 4096))  # guards are a page of the storing machine
    table = stored_in_shared_memory(weights_table(300_000), first_offset=64 + 8 * 4096)
    (weight,) = materialize(table, LoadOptions())
    ((start, end),) = memory.protected_ranges()
    first, last = weight.data_ptr(), weight.data_ptr() + weight.nbytes
    assert start <= first and last <= end
    (chunk,) = table.chunks
    assert chunk.buffers[0].ctypes.data <= start and end <= chunk.buffers[-1].ctypes.data + memory.GUARD_BYTES
    assert start % page_size == 0 and end % page_size == 0
    assert not writable(first) and not writable(last - 1)
    del weight
    gc.collect()
    assert memory.protected_ranges() == []


def test_two_loads_of_one_object_keep_it_read_only_until_both_are_gone() -> None:
    table = stored_in_shared_memory(weights_table(200_000))
    (first,) = materialize(table, LoadOptions())
    (second,) = materialize(table, LoadOptions(prefault=True, use_fast_load=True))
    address = second.data_ptr()
    del first
    gc.collect()
    assert not writable(address), "dropping one load made the other's weights writable"
    assert len(memory.protected_ranges()) == 1
    del second
    gc.collect()
    assert writable(address) and memory.protected_ranges() == []


def test_a_private_copy_neither_protects_nor_counts() -> None:
    table = stored_in_shared_memory(weights_table(100_000))
    (shared,) = materialize(table, LoadOptions())
    (private,) = materialize(table, LoadOptions(writable=True))
    private.add_(1)  # a private copy takes writes
    assert torch.equal(private - 1, shared)
    address = shared.data_ptr()
    del shared
    gc.collect()
    assert writable(address) and memory.protected_ranges() == []


def test_tables_that_never_left_the_process_are_not_protected() -> None:
    plain = weights_table(100_000)
    chunk = TableChunk((0,), memory.guarded(plain.storages))  # guarded, consecutive or not, but on the heap
    table = replace(plain, chunks=(chunk,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        (weight,) = materialize(table, LoadOptions())
    assert memory.protected_ranges() == []
    assert memory.map_stored_chunk(chunk.buffers, protect=True) is None
    del weight


def test_a_page_size_larger_than_the_guards_loads_unprotected_and_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "PAGE_SIZE", 2 * memory.GUARD_BYTES)
    monkeypatch.setattr(memory, "_warned_unprotected", False)
    table = stored_in_shared_memory(weights_table(100_000))
    with pytest.warns(RuntimeWarning, match="NOT write-protected.*page size"):
        (weight,) = materialize(table, LoadOptions())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (again,) = materialize(table, LoadOptions())  # once per process
    assert torch.equal(weight, again) and memory.protected_ranges() == []


def test_a_failing_mprotect_loads_unprotected_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_mprotect", lambda start, length, prot: 1)  # EPERM
    monkeypatch.setattr(memory, "_warned_unprotected", False)
    table = stored_in_shared_memory(weights_table(100_000))
    with pytest.warns(RuntimeWarning, match="NOT write-protected.*mprotect failed: Operation not permitted"):
        (weight,) = materialize(table, LoadOptions())
    assert torch.equal(weight, torch.arange(25_000, dtype=torch.float32))


SCRIPT_HEADER = """\
import torch
from shm_tables import stored_in_shared_memory, weights_table
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.plugin import LoadOptions
from ray_zerocopy_core.representation import TableChunk
"""


def run_script(body: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter next to this file; fail (not hang) past ``timeout``."""
    script = SCRIPT_HEADER + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=HERE)


def assert_explained_segfault(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == -11, result.stderr  # SIGSEGV
    assert "protected" in result.stdout and "not reached" not in result.stdout
    assert result.stderr.count("read-only") == 1 and "load(writable=True)" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("threads", "wanted", "minimum"),
    # the main thread; torch's intra-op worker threads (no GIL), which split a write of 1 MiB or more
    [(1, 64 * 1024, 64 * 1024), (4, 256 * MIB, 4 * MIB)],
)
def test_a_write_stops_the_process_and_names_the_fix(threads: int, wanted: int, minimum: int) -> None:
    nbytes = shm_size(wanted, minimum)
    result = run_script(
        f"""
        torch.set_num_threads({threads})
        table = stored_in_shared_memory(weights_table({nbytes}))
        (weight,) = materialize(table, LoadOptions())
        print("protected", flush=True)
        weight.mul_(2.0)
        print("not reached", flush=True)
        """
    )
    assert_explained_segfault(result)


def test_a_write_from_a_thread_without_the_gil_cannot_hang_the_explainer() -> None:
    # The writer is C that never takes the GIL: fgets() blocks on a pipe, then copies the
    # line it reads into the protected weights. Once it is seen blocked, the main thread
    # takes the GIL for good: through PyDLL (calls that keep the GIL) it sends the line,
    # then sleeps 60 s. A handler that needed Python would wait for the GIL that long.
    shm_size(2 * MIB, 2 * MIB)
    result = run_script(
        """
        import ctypes, os, sys, threading, time
        libc = ctypes.CDLL("libc.so.6")  # calls through CDLL release the GIL
        libc.fdopen.restype = ctypes.c_void_p
        libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
        libc.fgets.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        table = stored_in_shared_memory(weights_table(1024**2))
        (weight,) = materialize(table, LoadOptions())
        read_end, write_end = os.pipe()
        writer = threading.Thread(target=libc.fgets, args=(weight.data_ptr() + 64, 64, libc.fdopen(read_end, b"r")))
        writer.start()
        deadline = time.monotonic() + 20
        while "pipe_read" not in open(f"/proc/self/task/{writer.native_id}/wchan").read():
            if time.monotonic() > deadline:
                sys.exit(3)  # the kernel does not say where the writer waits
            time.sleep(0.01)
        print("protected", flush=True)
        line = b"written into the weights\\n"
        held = ctypes.PyDLL("libc.so.6")
        held.write(write_end, line, len(line))
        held.usleep(60_000_000)
        print("not reached", flush=True)
        """,
        timeout=30,
    )
    if result.returncode == 3:
        pytest.skip("/proc/self/task/*/wchan does not show the writer blocked on its pipe")
    assert_explained_segfault(result)


@pytest.mark.parametrize("with_faulthandler", [False, True])
def test_other_segfaults_end_as_before(with_faulthandler: bool) -> None:
    result = run_script(
        f"""
        import ctypes, faulthandler, threading
        if {with_faulthandler}:
            faulthandler.enable()
        table = stored_in_shared_memory(weights_table(64 * 1024))
        loads = [threading.Thread(target=materialize, args=(table, LoadOptions())) for _ in range(8)]
        [t.start() for t in loads]; [t.join() for t in loads]
        print("protected", flush=True)
        ctypes.string_at(16)  # a crash unrelated to the weights
        print("not reached", flush=True)
        """
    )
    assert result.returncode == -11 and "not reached" not in result.stdout, result.stderr
    assert "read-only" not in result.stderr
    assert ("Fatal Python error: Segmentation fault" in result.stderr) == with_faulthandler


def test_a_segv_sent_by_kill_is_not_swallowed() -> None:
    result = run_script(
        """
        import os, signal, threading
        from ray_zerocopy_core import fault_explainer
        table = stored_in_shared_memory(weights_table(64 * 1024))
        loads = [threading.Thread(target=materialize, args=(table, LoadOptions())) for _ in range(8)]
        [t.start() for t in loads]; [t.join() for t in loads]
        assert fault_explainer.install() is None
        print("protected", flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
        import time; time.sleep(5)
        print("not reached", flush=True)
        """
    )
    assert result.returncode == -11 and "not reached" not in result.stdout, result.stderr
    assert "read-only" not in result.stderr


def test_a_release_inside_a_locked_section_is_queued_not_deadlocked() -> None:
    """A garbage collection can run a mapping's finalizer while this thread holds the lock."""
    table = stored_in_shared_memory(weights_table(100_000))
    (first,) = materialize(table, LoadOptions())
    address = first.data_ptr()
    outcome: list[bool] = []

    def drop_inside_the_lock() -> None:
        nonlocal first
        with memory._lock:
            del first
            gc.collect()  # the finalizer runs here and must only queue
            outcome.append(writable(address))

    worker = threading.Thread(target=drop_inside_the_lock)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "the finalizer blocked on the lock its own thread holds"
    assert outcome == [False]  # still read-only until the queue is settled
    (second,) = materialize(table, LoadOptions())  # settles the queue, then maps again
    assert not writable(address) and len(memory.protected_ranges()) == 1
    del second
    gc.collect()
    assert writable(address) and memory.protected_ranges() == []
