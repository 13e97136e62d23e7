"""Shared fixtures: one real local Ray per test module, shut down after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

HERE = Path(__file__).parent


def expose_tests_to_workers() -> None:
    """Let Ray workers import test modules (classes defined there travel by reference).

    Workers inherit the environment of the Ray processes ``ray.init`` starts, so
    putting this folder on ``PYTHONPATH`` before starting Ray is enough.
    """
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(HERE) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), *filter(None, paths)])


expose_tests_to_workers()


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs and a 2 GiB object store, for one test module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",  # always a private cluster, never one started elsewhere on the machine
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=2 * 1024**3,
        logging_level="ERROR",
        log_to_driver=True,
    )
    yield
    ray.shutdown()
