"""Physical-memory and object-store probes (Linux ``/proc``), used on the driver and in actors.

How the benchmark counts the extra memory of N workers holding a model:

* private memory: the growth of ``Pss - Pss_Shmem`` (``/proc/PID/smaps_rollup``) of
  each actor and of the driver, from just before the method starts to just after every
  actor has loaded and run its first forward. PSS splits pages shared between
  processes, so nothing is counted twice; shared-memory pages are left out here. Each
  process's heap is trimmed (``malloc_trim``) before each reading, so memory freed but
  still held by the allocator is not counted;
* shared memory: the growth of the bytes Ray's object store reports in use, plus the
  growth of the benchmark's own files in ``/dev/shm`` (allocated blocks; e.g. the
  safetensors file). Ray's store keeps the pages it has touched, so the benchmark
  writes over the whole store once at start-up (:func:`pretouch_object_store`); from
  then on the store's count is its physical growth.

The growth of ``Shmem`` in ``/proc/meminfo`` is recorded next to it as a cross-check
(``shmem_growth``), but not summed: it is machine-wide, and other processes on a shared
machine (other Ray clusters) move it by hundreds of MiB while a point is measured.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ray_zerocopy_core.inspection import shared_memory_ranges
from ray_zerocopy_core.process_memory import private_memory_bytes as private_bytes

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size (all mapped pages, shared ones included), from ``/proc/PID/statm``."""
    with open(f"/proc/{pid or os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def meminfo_shmem() -> int:
    """Machine-wide ``Shmem`` from ``/proc/meminfo``, bytes."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) * 1024
    return 0


#: Prefix of every file the benchmark writes into /dev/shm.
SHM_PREFIX = "ray_zerocopy_bench_"


def benchmark_shm_bytes() -> int:
    """Bytes held by the benchmark's own files in /dev/shm (allocated blocks)."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir("/dev/shm"):
            if entry.name.startswith(SHM_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_blocks * 512
    return total


def object_store_bytes_used() -> int:
    """Bytes Ray's object store on this node reports in use (primary copies and mapped)."""
    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    address = ray.get_runtime_context().gcs_address
    reply = get_memory_info_reply(get_state_from_address(address))
    return int(reply.store_stats.object_store_bytes_used)


def pretouch_object_store(capacity: int) -> None:
    """Write once over (nearly) the whole object store, then free it (see module doc)."""
    import ray

    chunk = np.zeros(int(capacity * 0.9), dtype=np.uint8)
    ref = ray.put(chunk)
    del ref, chunk


def shared_fraction(model: torch.nn.Module) -> float:
    """Fraction of ``model``'s weight bytes whose memory lies in the object store or /dev/shm."""
    ranges = shared_memory_ranges()
    storages: dict[int, int] = {}
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    total = sum(storages.values()) or 1
    inside = sum(n for ptr, n in storages.items() if any(s <= ptr < e for s, e in ranges))
    return inside / total


@dataclass
class PeakSampler:
    """Samples this process's RSS and private bytes in a thread; use as a context manager.

    ``peak_rss`` / ``peak_private`` are the largest growths over the values at entry.
    RSS counts the object-store pages the process writes; private bytes do not. What
    counts as private is ``read_private``: ``Pss - Pss_Shmem`` by default, ``Pss_Anon``
    (:func:`anonymous_memory_bytes`) for a process that maps files it did not copy.
    """

    interval: float = 0.005
    read_private: Callable[[], int] = private_bytes
    peak_rss: int = 0
    peak_private: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> PeakSampler:
        self._rss0, self._private0 = rss_bytes(), self.read_private()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        self.peak_rss = max(self.peak_rss, rss_bytes() - self._rss0)
        self.peak_private = max(self.peak_private, self.read_private() - self._private0)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]  # total, idle + iowait


def wait_for_quiet(idle_fraction: float = 0.7, window: float = 0.2, timeout: float = 1.5) -> float:
    """Wait (at most ``timeout`` s) until the machine's CPUs are ``idle_fraction`` idle over a
    ``window``, so workers still starting or exiting do not run inside a timed load; the
    machine-wide idle fraction last seen is returned."""
    deadline = time.monotonic() + timeout
    idle = 0.0
    while True:
        total0, idle0 = _cpu_times()
        time.sleep(window)
        total1, idle1 = _cpu_times()
        idle = (idle1 - idle0) / max(1, total1 - total0)
        if idle >= idle_fraction or time.monotonic() >= deadline:
            return idle


def memcpy_seconds(model: torch.nn.Module) -> float:
    """Time to copy every weight once into fresh memory (``empty_like(t).copy_(t)``)."""
    tensors = {t.untyped_storage().data_ptr(): t for t in list(model.parameters()) + list(model.buffers())}
    start = time.perf_counter()
    copies = [torch.empty_like(t).copy_(t) for t in tensors.values()]
    elapsed = time.perf_counter() - start
    del copies
    return elapsed
