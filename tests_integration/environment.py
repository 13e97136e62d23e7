"""What a test needs from the machine and the installation, and how it says so when it is missing.

- :func:`require`: an optional package; skipped without it, except under nox
  (``RAY_ZEROCOPY_REQUIRE_ALL=1``), where every package is installed by design and a
  missing one is a failure, not a quiet skip.
- :func:`local_ray`: a private Ray for this process, never a cluster already running here.
- :func:`on_path`: a distribution installed into a temporary folder, not into the
  environment running the tests.
- :func:`populate_read_supported`, :func:`wait_until`: kernel features and polling;
- :func:`anonymous_memory_or_skip`, :func:`page_cache_stays`: whether this kernel and
  filesystem can show what a memory test measures (a skip names the one that cannot);
- :func:`assert_stopped_by_a_weight_write`: a dead Ray worker's log names a write to a weight.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import mmap
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import ray

from ray_zerocopy_core.fault_explainer import FAULT_MESSAGE
from ray_zerocopy_core.process_memory import anonymous_memory_bytes

#: Set to ``1`` by the nox sessions: every optional package must import, none may skip.
REQUIRE_ALL = "RAY_ZEROCOPY_REQUIRE_ALL"


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` for a test; skip (``why`` says what it is for) when it is not installed.

    Under ``RAY_ZEROCOPY_REQUIRE_ALL=1`` a missing module fails the test instead.
    """
    if os.environ.get(REQUIRE_ALL) != "1":
        return pytest.importorskip(module, reason=f"{module} is not installed ({why})")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"{module} must be installed here ({REQUIRE_ALL}=1; {why}): {exc}")


@contextlib.contextmanager
def local_ray(num_cpus: int = 2, **options: Any) -> Iterator[None]:
    """A private local Ray (``address="local"``) for the block, shut down after it.

    ``address="local"`` starts a new cluster even when one already runs on this machine
    (a plain ``ray.init()`` would join that one).
    """
    if ray.is_initialized():
        ray.shutdown()
    settings: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", **options}
    ray.init(address="local", num_cpus=num_cpus, **settings)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def on_path(project: Path, target: Path) -> Iterator[None]:
    """``project`` installed (``--no-deps``) into ``target`` and importable for the block.

    ``target`` goes on ``sys.path`` and on ``PYTHONPATH`` (for child processes and the
    Ray workers started inside the block); the environment running the tests is left
    untouched, and both paths are restored afterwards.
    """
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(project)]
    if importlib.util.find_spec("hatchling") is not None:
        pip.append("--no-build-isolation")  # build with the hatchling here: works offline
    done = subprocess.run(pip, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"could not install {project} into {target}:\n{done.stdout}\n{done.stderr}")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        paths = [str(target), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        patch.setenv("PYTHONPATH", os.pathsep.join(paths))
        yield
    importlib.invalidate_caches()


_MADV_POPULATE_READ = 22


def populate_read_supported() -> bool:
    """Whether this kernel knows ``madvise(MADV_POPULATE_READ)`` (Linux 5.14+), which ``prefault`` uses."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = mmap.mmap(-1, mmap.PAGESIZE)
    first_byte = ctypes.c_char.from_buffer(page)
    supported = libc.madvise(ctypes.addressof(first_byte), mmap.PAGESIZE, _MADV_POPULATE_READ) == 0
    del first_byte  # the mapping can be closed only once nothing points into it
    page.close()
    return supported


def wait_until(condition: Callable[[], bool], timeout: float = 60, interval: float = 0.1) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(interval)
    return True


def anonymous_memory_or_skip() -> int:
    """This process's anonymous memory (``Pss_Anon``); skips the test, naming the kernel, where there is none.

    Kernels before 5.7 do not report ``Pss_Anon``: a growth read there would be 0 and
    prove nothing, so the test cannot run rather than pass unmeasured.
    """
    value = anonymous_memory_bytes()
    if value is None:
        pytest.skip(
            f"kernel {platform.release()} reports no Pss_Anon in /proc/self/smaps_rollup (Linux 5.7+), "
            "so a process's private memory cannot be measured here"
        )
    return value


#: Filesystems whose files live in the page cache itself: ``POSIX_FADV_DONTNEED`` drops nothing.
MEMORY_FILESYSTEMS = ("tmpfs", "ramfs")


def filesystem_of(path: Path) -> tuple[str, str]:
    """The type and mount point of the filesystem holding ``path`` (``/proc/self/mounts``)."""
    target = os.path.realpath(path)
    kind, mount_point = "unknown", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, fstype = line.split()[:3]
            point = point.replace("\\040", " ")
            inside = target == point or target.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(mount_point):  # the deepest mount, the last one mounted
                kind, mount_point = fstype, point
    return kind, mount_point


def page_cache_stays(path: Path) -> str | None:
    """Why the page cache of files under ``path`` cannot be dropped here (a skip reason), or None if it can."""
    kind, mount_point = filesystem_of(path)
    if kind in MEMORY_FILESYSTEMS:
        return (
            f"{path} is on {kind} (mounted at {mount_point}): its files are memory, so POSIX_FADV_DONTNEED "
            "drops none of their pages and the page-cache checks cannot run (use a disk-backed --basetemp)"
        )
    return None


def worker_log(pid: int) -> Path:
    """The stderr log (``worker-*-PID.err``) of Ray worker ``pid`` in this driver's Ray session."""
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    found = sorted(logs.glob(f"worker-*-{pid}.err"))
    assert found, f"no worker-*-{pid}.err in {logs}"
    return found[-1]


def assert_stopped_by_a_weight_write(pid: int, timeout: float = 30) -> None:
    """Assert that Ray worker ``pid`` died of a write to a shared weight, as its own log says.

    The fault explainer writes :data:`~ray_zerocopy_core.fault_explainer.FAULT_MESSAGE`
    to the worker's stderr before the SIGSEGV ends it; any other death leaves no such line.
    """
    log = worker_log(pid)
    if not wait_until(lambda: FAULT_MESSAGE.strip() in log.read_text(errors="replace"), timeout, 0.2):
        tail = log.read_text(errors="replace")[-2000:]
        raise AssertionError(f"worker {pid} died, but its log {log} does not name a write to a weight:\n{tail}")
