"""Shared fixtures: one real local Ray per test module, shut down after it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import ray


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """A local Ray with 2 CPUs and a 2 GiB object store, for one test module."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=2 * 1024**3,
        logging_level="ERROR",
        log_to_driver=True,
    )
    yield
    ray.shutdown()
