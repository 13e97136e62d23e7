"""Starting the benchmark's own local Ray and describing the machine it runs on."""

from __future__ import annotations

import datetime
import os
import platform
import sys
from typing import Any

import ray
import torch

from benchkit.memory import pretouch_object_store
from benchkit.probe import BENCHMARKS_DIR

MIB = 1024**2


def start_ray(object_store_mib: int, num_cpus: int = 2, pretouch: bool = True) -> None:
    """Start a private local Ray whose workers can import ``benchkit``.

    With ``pretouch`` (the default) the whole object store is written over once, so that
    from then on every method writing into it finds its pages already faulted in (see
    :mod:`benchkit.memory`); without, the store is fresh, as a user's first wrap finds it.
    """
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS_DIR), path]))
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        object_store_memory=object_store_mib * MIB,
        log_to_driver=False,
        configure_logging=False,
    )
    if pretouch:
        pretouch_object_store(object_store_mib * MIB)


def machine_info() -> dict[str, Any]:
    """Cores, memory, versions and date, recorded with every result."""
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import ray_zerocopy_core

    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(total_kib / 1024**2, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "ray": ray.__version__,
        "ray_zerocopy": ray_zerocopy_core.__version__,
        "platform": platform.platform(),
    }
