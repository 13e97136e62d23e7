"""ray-zerocopy 0.x's module functions: each imports from 0.x's path, warns once, and round-trips a model.

The names are 0.x's ``ray_zerocopy.__all__``, ``ray_zerocopy.nn.__all__`` and
``ray_zerocopy.jit.__all__`` (its last release), written here, not read from ours.
"""

from __future__ import annotations

import importlib
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import ray
import torch
from torch import nn

from ray_zerocopy_core.inspection import aliases_object_store

pytestmark = pytest.mark.usefixtures("ray_local", "one_thread")

TOP_0X = ["__version__", "ModelWrapper", "JITModelWrapper"]
NN_0X = ["load_pipeline_for_actors", "load_pipeline_for_tasks", "rewrite_pipeline", "prepare_pipeline"]
NN_0X += ["model_info_to_model_refs"]
JIT_0X = ["prepare_jit_model_for_actors", "load_jit_model_in_actor", "prepare_pipeline_for_actors"]
JIT_0X += ["load_pipeline_for_actors", "model_info_to_model_refs", "prepare_pipeline_for_tasks"]
JIT_0X += ["load_pipeline_for_tasks", "rewrite_pipeline", "call_model", "extract_tensors", "replace_tensors"]
JIT_0X += ["extract_tensors_minimal"]


class Pair:
    """A two-model pipeline, importable by workers."""

    def __init__(self, encoder: Any, decoder: Any) -> None:
        self.encoder = encoder
        self.decoder = decoder

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.relu(self.encoder(x)))


def eager_pair() -> Pair:
    torch.manual_seed(0)
    return Pair(nn.Linear(32, 64), nn.Linear(64, 8))


def script_pair() -> Pair:
    pair = eager_pair()
    return Pair(torch.jit.script(pair.encoder), torch.jit.script(pair.decoder))


def once(call: Callable[[], Any], replacement: str) -> Any:
    """Run ``call``; check it emitted exactly one DeprecationWarning, naming ``replacement``."""
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        result = call()
    deprecations = [str(w.message) for w in found if issubclass(w.category, DeprecationWarning)]
    ours = [m for m in deprecations if "ray_zerocopy" in m or "deprecated; use" in m]
    assert len(ours) == 1 and replacement in ours[0], deprecations
    return result


@ray.remote(num_cpus=0.5)
def load_in_worker(module: str, function: str, args: tuple[Any, ...], x: torch.Tensor) -> tuple[Any, int, bool]:
    """Call ``module.function(*args)`` in a worker; return the loaded pipeline's output, warnings, aliasing."""
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        loaded = getattr(importlib.import_module(module), function)(*args)
    count = sum(issubclass(w.category, DeprecationWarning) and "deprecated; use" in str(w.message) for w in found)
    models = [loaded] if isinstance(loaded, nn.Module) else [loaded.encoder, loaded.decoder]
    shared = all(aliases_object_store(t) for m in models for t in m.state_dict().values())
    return loaded(x), count, shared


def test_every_name_of_0x_imports_from_its_path() -> None:
    import ray_zerocopy
    import ray_zerocopy.jit
    import ray_zerocopy.nn

    for module, names in ((ray_zerocopy, TOP_0X), (ray_zerocopy.nn, NN_0X), (ray_zerocopy.jit, JIT_0X)):
        for name in names:
            assert getattr(module, name).__doc__, f"{module.__name__}.{name}"
            assert name in getattr(module, "__all__", ()) or name in {"JITModelWrapper"}, name


def test_nn_functions_round_trip_a_pipeline() -> None:
    import ray_zerocopy.nn as rzn

    pipeline, x = eager_pair(), torch.randn(5, 32)
    expected = pipeline(x)

    skeleton, info = once(lambda: rzn.prepare_pipeline(pipeline), "ActorWrapper(pipeline)")
    assert set(info) == {"encoder", "decoder"} and all(methods is None for _, methods in info.values())
    refs = once(lambda: rzn.model_info_to_model_refs(info), "wrapper.model_refs")
    assert all(isinstance(ref, ray.ObjectRef) for ref in refs.values())
    out, count, shared = ray.get(
        load_in_worker.remote("ray_zerocopy.nn", "load_pipeline_for_actors", (skeleton, refs), x)
    )
    assert torch.equal(out, expected) and count == 1 and shared

    skeleton, info = once(lambda: rzn.prepare_pipeline(pipeline, method_names=("__call__",)), "TaskWrapper")
    assert all(methods == {"__call__"} for _, methods in info.values())
    tasks = once(lambda: rzn.load_pipeline_for_tasks(skeleton, info), "TaskWrapper(pipeline).load()")
    assert torch.equal(tasks(x), expected)

    rewritten = once(lambda: rzn.rewrite_pipeline(pipeline), "TaskWrapper(pipeline)")
    assert torch.equal(rewritten(x), expected)


def test_jit_actor_functions_round_trip_a_model_and_a_pipeline() -> None:
    import ray_zerocopy.jit as rzj

    pipeline, x = script_pair(), torch.randn(5, 32)
    ref = once(lambda: rzj.prepare_jit_model_for_actors(pipeline.encoder), "JITActorWrapper(model)")
    out, count, shared = ray.get(load_in_worker.remote("ray_zerocopy.jit", "load_jit_model_in_actor", (ref,), x))
    assert torch.equal(out, pipeline.encoder(x)) and count == 1 and shared

    skeleton, refs = once(lambda: rzj.prepare_pipeline_for_actors(pipeline), "JITActorWrapper(pipeline)")
    assert set(refs) == {"encoder", "decoder"}
    out, count, shared = ray.get(
        load_in_worker.remote("ray_zerocopy.jit", "load_pipeline_for_actors", (skeleton, refs), x)
    )
    assert torch.equal(out, pipeline(x)) and count == 1 and shared


def test_jit_task_functions_round_trip_a_pipeline() -> None:
    import ray_zerocopy.jit as rzj

    pipeline, x = script_pair(), torch.randn(5, 32)
    expected = pipeline(x)
    skeleton, info = once(
        lambda: rzj.prepare_pipeline_for_tasks(pipeline, ("__call__", "forward"), filter_private=False),
        "JITTaskWrapper(pipeline)",
    )
    assert all(methods == {"__call__", "forward"} for _, methods in info.values())
    assert set(once(lambda: rzj.model_info_to_model_refs(info), "wrapper.model_refs")) == {"encoder", "decoder"}
    tasks = once(lambda: rzj.load_pipeline_for_tasks(skeleton, info), "JITTaskWrapper(pipeline).load()")
    assert torch.equal(tasks(x), expected)
    assert torch.equal(tasks.encoder.forward(x), pipeline.encoder(x))
    rewritten = once(lambda: rzj.rewrite_pipeline(pipeline), "JITTaskWrapper(pipeline)")
    assert torch.equal(rewritten(x), expected)


@pytest.mark.parametrize("extract", ["extract_tensors", "extract_tensors_minimal"])
def test_jit_extract_and_replace_tensors_keep_0x_shapes(extract: str) -> None:
    import ray_zerocopy.jit as rzj

    model, x = script_pair().encoder, torch.randn(5, 32)
    model_bytes, tensors = once(lambda: getattr(rzj, extract)(model), "JITActorWrapper(model)")
    assert isinstance(model_bytes, bytes) and isinstance(tensors, OrderedDict)
    state = model.state_dict()
    assert list(tensors) == list(state)  # 0.x's keys: the state_dict names
    for name, array in tensors.items():
        assert isinstance(array, np.ndarray) and array.shape == tuple(state[name].shape), name
        assert array.ctypes.data == state[name].data_ptr(), f"{name}: a copy, not a view"
    assert len(model_bytes) < 32 * 64 * 4  # the weights are in the arrays, not in the skeleton
    travelled_bytes, travelled = ray.get(ray.put((model_bytes, tensors)))  # through the object store
    rebuilt = once(lambda: rzj.replace_tensors(travelled_bytes, travelled), "JITActorWrapper(model).load()")
    assert isinstance(rebuilt, torch.jit.ScriptModule) and torch.equal(rebuilt(x), model(x))
    assert all(aliases_object_store(t) for t in rebuilt.state_dict().values())  # the arrays, not copies
    with pytest.raises(TypeError, match=r"^Expected torch\.jit\.ScriptModule, got Linear"):
        getattr(rzj, extract)(nn.Linear(2, 2))


def test_jit_call_model_runs_a_stored_model_in_a_task() -> None:
    import ray_zerocopy.jit as rzj

    model, x = script_pair().encoder, torch.randn(5, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stored = rzj.prepare_jit_model_for_actors(model)
        extracted = ray.put(rzj.extract_tensors(model))
    for ref in (stored, extracted):
        result = once(lambda ref=ref: rzj.call_model.remote(ref, (x,)), "JITTaskWrapper(model)(...)")
        assert torch.equal(ray.get(result), model(x))
    forward = once(lambda: rzj.call_model.options(num_cpus=0.5).remote(stored, (x,), None, "forward"), "JITTask")
    assert torch.equal(ray.get(forward), model(x))
