"""Shared fixtures: one real local Ray per test module, shut down after it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from environment import local_ray

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
    """A private local Ray with 2 CPUs and a 2 GiB object store, for one test module."""
    with local_ray(object_store_memory=2 * 1024**3, log_to_driver=True):
        yield


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run this process's reference computations on one thread, as fractional-CPU Ray workers do.

    Matmul reductions may be ordered differently with more threads, which changes the last
    bit of some outputs; bit-exact comparisons across processes need the same thread count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
