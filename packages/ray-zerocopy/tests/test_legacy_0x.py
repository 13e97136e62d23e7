"""ray-zerocopy 0.x's module functions: each 0.x import path reaches the one implementation.

Checks that need no Ray cluster (import paths, binding, the Ray-free round trip of
``extract_tensors``/``replace_tensors``, argument checks); ``tests_integration``
(``test_compat_0x_*``) runs every function on a real local Ray.
"""

from __future__ import annotations

import pickle
import warnings
from collections import OrderedDict
from types import MethodType
from typing import Any

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


class Tied(torch.nn.Module):
    """Embedding and head share one weight; BatchNorm brings buffers (one of them int64)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(64, 64, bias=False)
        self.norm = torch.nn.BatchNorm1d(64)
        self.head = torch.nn.Linear(64, 64, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.embed(x))))


def scripted(dtype: torch.dtype = torch.float32) -> torch.jit.ScriptModule:
    torch.manual_seed(0)
    model = Tied()
    model.train()
    model(torch.randn(16, 64))  # running statistics that differ from their initial values
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is")  # Deprecation- or FutureWarning
        return torch.jit.script(model.eval().to(dtype))


def extract(model: torch.jit.ScriptModule) -> tuple[bytes, OrderedDict[str, np.ndarray]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray_zerocopy.jit.extract_tensors(model)


def replace(model_bytes: bytes, tensors: Any) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return ray_zerocopy.jit.replace_tensors(model_bytes, tensors)


def test_extract_and_replace_tensors_round_trip_without_ray() -> None:
    model = scripted()
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
    x = torch.randn(3, 64)
    assert isinstance(rebuilt, torch.jit.ScriptModule) and torch.equal(rebuilt(x), model(x))
    assert len(model_bytes) < 64 * 64 * 4  # the weights are in the arrays, not in the bytes


def test_extract_tensors_gives_0x_arrays_named_and_shaped_like_the_state_dict() -> None:
    model = scripted()
    _, tensors = extract(model)
    state = model.state_dict()
    assert list(tensors) == list(state)  # every name, buffers and the tied head.weight included
    assert "norm.running_mean" in tensors and "head.weight" in tensors
    for name, tensor in state.items():
        array = tensors[name]
        assert array.shape == tuple(tensor.shape) and array.dtype == tensor.numpy().dtype, name
        assert array.ctypes.data == tensor.data_ptr(), f"{name} is a copy, not a view of the model's memory"
        assert np.array_equal(array, tensor.numpy()), name
    assert tensors["norm.num_batches_tracked"].dtype == np.int64


def test_replace_tensors_aliases_the_arrays_and_keeps_tied_weights_one_tensor() -> None:
    model = scripted()
    model_bytes, tensors = extract(model)
    travelled_bytes, travelled = pickle.loads(pickle.dumps((model_bytes, tensors), protocol=5))  # as Ray sends them
    rebuilt = replace(travelled_bytes, travelled)
    rebuilt_state = rebuilt.state_dict()
    assert travelled["head.weight"].ctypes.data != travelled["embed.weight"].ctypes.data  # pickled apart
    holder = {name: "embed.weight" if name == "head.weight" else name for name in travelled}  # a tie: its first name
    for name, tensor in rebuilt_state.items():
        assert tensor.data_ptr() == travelled[holder[name]].ctypes.data, f"{name} was copied"
    assert rebuilt.head.weight.data_ptr() == rebuilt.embed.weight.data_ptr()


def test_replace_tensors_takes_new_arrays_of_the_same_names() -> None:
    model = scripted()
    model_bytes, _ = extract(model)
    other = scripted()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.mul_(-2.0)
    swapped = OrderedDict((name, array.copy()) for name, array in extract(other)[1].items())
    rebuilt = replace(model_bytes, swapped)
    x = torch.randn(3, 64)
    assert torch.equal(rebuilt(x), other(x)) and not torch.equal(rebuilt(x), model(x))


def test_dtypes_numpy_lacks_come_as_their_raw_bits() -> None:
    model = scripted(torch.bfloat16)
    model_bytes, tensors = extract(model)
    weight = model.state_dict()["embed.weight"]
    array = tensors["embed.weight"]
    assert array.dtype == np.uint16 and array.shape == tuple(weight.shape)
    assert array.ctypes.data == weight.data_ptr()
    assert torch.equal(torch.from_numpy(array).view(torch.bfloat16), weight)
    assert legacy.numpy_dtype(torch.bfloat16) == np.uint16
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    assert torch.equal(replace(model_bytes, tensors)(x), model(x))


class Scaled(torch.nn.Module):
    """A plain tensor attribute: scripted, it is no parameter nor buffer, and not in the state_dict."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)
        self.scale = torch.full((8,), 3.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def test_tensors_outside_the_state_dict_travel_in_the_model_bytes() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is")  # Deprecation- or FutureWarning
        model = torch.jit.script(Scaled().eval())
    model_bytes, tensors = extract(model)
    assert list(tensors) == list(model.state_dict()) and "scale" not in tensors
    x = torch.randn(2, 8)
    assert torch.equal(replace(model_bytes, tensors)(x), model(x))


def test_replace_tensors_names_a_wrong_or_missing_array() -> None:
    model_bytes, tensors = extract(scripted())
    wrong = OrderedDict(tensors, **{"embed.weight": np.zeros((2, 2), dtype=np.float32)})
    with pytest.raises(UnsupportedModelError, match=r"tensors\['embed.weight'\] is float32 \(2, 2\).*torch.float32"):
        replace(model_bytes, wrong)
    missing = OrderedDict((k, v) for k, v in tensors.items() if k != "norm.running_var")
    with pytest.raises(UnsupportedModelError, match="tensors has no 'norm.running_var'"):
        replace(model_bytes, missing)


def test_jit_extract_refuses_an_eager_model_after_warning() -> None:
    warned = pytest.warns(DeprecationWarning, match=r"ray_zerocopy\.jit\.extract_tensors\(\)")
    with warned, pytest.raises(TypeError, match=r"^Expected torch\.jit\.ScriptModule, got Linear"):
        ray_zerocopy.jit.extract_tensors(torch.nn.Linear(2, 2))


def test_load_options_merged_keeps_what_is_not_given() -> None:
    base = LoadOptions(device="cpu", use_fast_load=True)
    assert base.merged() == base
    assert base.merged(device=None, writable=True) == LoadOptions(device="cpu", use_fast_load=True, writable=True)
    assert base.merged(use_fast_load=False).use_fast_load is False  # False is a value, not "keep"
