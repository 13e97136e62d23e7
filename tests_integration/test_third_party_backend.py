"""A backend from an outside distribution is found through its entry point alone.

The fixture project ``fixtures/toy-backend`` declares ``toy`` in the
``ray_zerocopy.backends`` group; nothing in core names it. The nox ``integration``
session installs it; run elsewhere, this module installs it into a temporary folder on
``PYTHONPATH`` (seen by the Ray it starts), never into the environment running the tests.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from environment import local_ray, on_path
from torch import nn

from ray_zerocopy import ActorWrapper, ModelWrapper
from ray_zerocopy_core import registry
from ray_zerocopy_core.inspection import aliases_object_store
from ray_zerocopy_core.registry import backend_for, backend_names

FIXTURE = Path(__file__).parent / "fixtures" / "toy-backend"


@pytest.fixture(scope="module")
def toy_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The toy backend's module, its distribution installed, and a private Ray whose workers see it."""
    with contextlib.ExitStack() as stack:
        if importlib.util.find_spec("toy_backend") is None:
            stack.enter_context(on_path(FIXTURE, tmp_path_factory.mktemp("toy-backend")))
        stack.enter_context(local_ray())  # started after the install: its workers inherit PYTHONPATH
        registry.reset_registry()
        stack.callback(registry.reset_registry)
        yield importlib.import_module("toy_backend")


def tables(module: Any) -> Any:
    torch.manual_seed(0)
    return module.LookupTables({"users": torch.randn(100, 8), "items": torch.randn(50, 8).to(torch.bfloat16)})


class Recommender:
    def __init__(self, lookup: Any) -> None:
        self.lookup = lookup
        self.ranker = nn.Linear(8, 1).eval()

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.ranker(self.lookup("users", ids))


def test_discovered_and_selected_for_the_objects_it_claims(toy_backend: Any) -> None:
    assert "toy" in backend_names()
    assert backend_for(tables(toy_backend)).name == "toy"
    assert backend_for(nn.Linear(2, 2)).name == "nn"


def test_actor_loads_the_plugin_model_zero_copy(toy_backend: Any) -> None:
    lookup = tables(toy_backend)
    ids = torch.tensor([3, 14, 15])

    @ray.remote(num_cpus=0.25)
    class Server:
        def __init__(self, wrapper: ActorWrapper) -> None:
            self.lookup = wrapper.load()

        def query(self, name: str, ids: torch.Tensor) -> tuple[torch.Tensor, bool]:
            return self.lookup(name, ids), all(aliases_object_store(t) for t in self.lookup.tables.values())

    server = Server.remote(ActorWrapper(lookup))
    result, aliased = ray.get(server.query.remote("items", ids))
    assert torch.equal(result, lookup("items", ids)) and aliased


def test_pipeline_sends_each_model_to_its_own_backend(toy_backend: Any) -> None:
    pipeline = Recommender(tables(toy_backend))
    ids = torch.tensor([1, 2])
    wrapped = ModelWrapper.for_tasks(pipeline, method_names=("__call__", "lookup"))
    assert wrapped.model_names == ["lookup", "ranker"]
    assert torch.equal(wrapped(ids), pipeline(ids))
