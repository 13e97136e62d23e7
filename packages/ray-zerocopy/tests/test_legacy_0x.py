"""ray-zerocopy 0.x's module functions: each 0.x import path reaches the one implementation.

Checks that need no Ray cluster (import paths, binding, the Ray-free round trip of
``extract_tensors``/``replace_tensors``, argument checks); ``tests_integration``
(``test_compat_0x_*``) runs every function on a real local Ray.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from types import MethodType

import numpy as np
import pytest
import torch

import ray_zerocopy.jit
import ray_zerocopy.legacy as legacy
import ray_zerocopy.nn
from ray_zerocopy.errors import UnsupportedModelError
from ray_zerocopy_core.options import LoadOptions

#: 0.x's ``ray_zerocopy.nn.__all__`` and ``ray_zerocopy.jit.__all__`` (its last release).
NN_0X = {"load_pipeline_for_actors", "load_pipeline_for_tasks", "rewrite_pipeline", "prepare_pipeline"}
NN_0X |= {"model_info_to_model_refs"}
JIT_0X = {"prepare_jit_model_for_actors", "load_jit_model_in_actor", "prepare_pipeline_for_actors"}
JIT_0X |= {"load_pipeline_for_actors", "model_info_to_model_refs", "prepare_pipeline_for_tasks"}
JIT_0X |= {"load_pipeline_for_tasks", "rewrite_pipeline", "call_model", "extract_tensors", "replace_tensors"}
JIT_0X |= {"extract_tensors_minimal"}


def test_0x_names_are_exported_and_bound_to_their_family() -> None:
    assert set(ray_zerocopy.nn.__all__) == NN_0X
    assert set(ray_zerocopy.jit.__all__) >= JIT_0X
    for module, names, family in ((ray_zerocopy.nn, NN_0X, legacy.EAGER), (ray_zerocopy.jit, JIT_0X, legacy.JIT)):
        for name in names - {"call_model"}:
            function = getattr(module, name)
            assert isinstance(function, MethodType) and function.__self__ is family, f"{module.__name__}.{name}"
    assert isinstance(ray_zerocopy.jit.call_model, legacy.CallModelTask)


def test_eager_and_jit_share_one_implementation() -> None:
    for name in ("prepare_pipeline_for_actors", "load_pipeline_for_tasks", "extract_tensors"):
        assert getattr(legacy.EAGER, name).__func__ is getattr(legacy.JIT, name).__func__, name


def test_extract_and_replace_tensors_round_trip_without_ray() -> None:
    torch.manual_seed(0)
    model = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2)))
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        model_bytes, tensors = ray_zerocopy.jit.extract_tensors(model)
        rebuilt = ray_zerocopy.jit.replace_tensors(model_bytes, tensors)
    messages = [str(w.message) for w in found if issubclass(w.category, DeprecationWarning)]
    assert messages == [
        "ray_zerocopy.jit.extract_tensors() is deprecated; use JITActorWrapper(model) instead.",
        "ray_zerocopy.jit.replace_tensors() is deprecated; use JITActorWrapper(model).load() instead.",
    ]
    assert isinstance(model_bytes, bytes) and isinstance(tensors, OrderedDict)
    assert all(isinstance(array, np.ndarray) and array.dtype == np.uint8 for array in tensors.values())
    x = torch.randn(3, 64)
    assert isinstance(rebuilt, torch.jit.ScriptModule) and torch.equal(rebuilt(x), model(x))
    weight = model.state_dict()["0.weight"]
    assert any(array.ctypes.data == weight.data_ptr() for array in tensors.values())  # views, no copy


def test_jit_extract_refuses_an_eager_model_after_warning() -> None:
    warned = pytest.warns(DeprecationWarning, match=r"ray_zerocopy\.jit\.extract_tensors\(\)")
    with warned, pytest.raises(UnsupportedModelError, match="takes a torch.jit.ScriptModule"):
        ray_zerocopy.jit.extract_tensors(torch.nn.Linear(2, 2))


def test_load_options_merged_keeps_what_is_not_given() -> None:
    base = LoadOptions(device="cpu", use_fast_load=True)
    assert base.merged() == base
    assert base.merged(device=None, writable=True) == LoadOptions(device="cpu", use_fast_load=True, writable=True)
    assert base.merged(use_fast_load=False).use_fast_load is False  # False is a value, not "keep"
