"""Tensor subclasses in the eager backend, without Ray: stored as their inner tensors, rebuilt around them.

A small int8-plus-scale subclass written here implements PyTorch's traceable-subclass
protocol (``__tensor_flatten__`` / ``__tensor_unflatten__``) the way torchao's quantized
tensors do, so these tests need no torchao; ``tests_integration/test_quantized.py``
runs torchao's own tensors on a real Ray.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from torch.utils import _pytree as pytree

from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.nn_backend import NNBackend, tensor_names
from ray_zerocopy_core.pickling import split_tensors
from ray_zerocopy_core.plugin import LoadOptions, ModelPayload, build_table


class ScaledInt8(torch.Tensor):
    """int8 values times a per-row scale; any op other than detach runs on the dequantized values."""

    #: ``(outer_size, outer_stride)`` of every unflatten, to check what rebuild passes.
    unflattened: ClassVar[list[tuple[tuple[int, ...], tuple[int, ...]]]] = []

    qdata: torch.Tensor
    scale: torch.Tensor
    label: str

    @staticmethod
    def __new__(cls, qdata: torch.Tensor, scale: torch.Tensor, label: str) -> ScaledInt8:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined,no-any-return]
            cls, qdata.shape, strides=qdata.stride(), dtype=scale.dtype, device=qdata.device, requires_grad=False
        )

    def __init__(self, qdata: torch.Tensor, scale: torch.Tensor, label: str) -> None:
        self.qdata, self.scale, self.label = qdata, scale, label

    def __tensor_flatten__(self) -> tuple[list[str], dict[str, Any]]:
        return ["qdata", "scale"], {"label": self.label}

    @classmethod
    def __tensor_unflatten__(
        cls, inner: dict[str, torch.Tensor], context: dict[str, Any], size: torch.Size, stride: tuple[int, ...]
    ) -> ScaledInt8:
        cls.unflattened.append((tuple(size), tuple(stride)))
        return cls(inner["qdata"], inner["scale"], context["label"])

    def dequantize(self) -> torch.Tensor:  # type: ignore[override]
        return self.qdata.to(self.scale.dtype) * self.scale

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.detach.default:
            (tensor,) = args
            return cls(tensor.qdata.detach(), tensor.scale.detach(), tensor.label)
        plain = pytree.tree_map_only(cls, lambda t: t.dequantize(), (args, kwargs or {}))
        return func(*plain[0], **plain[1])

    @classmethod
    def quantize(cls, weight: torch.Tensor, label: str = "rows") -> ScaledInt8:
        scale = weight.abs().amax(dim=-1, keepdim=True) / 127
        return cls(torch.round(weight / scale).to(torch.int8), scale, label)


class TwoPart(torch.Tensor):
    """The sum of two subclass tensors: a subclass whose inner tensors are subclasses (flattened recursively)."""

    high: torch.Tensor
    low: torch.Tensor

    @staticmethod
    def __new__(cls, high: torch.Tensor, low: torch.Tensor) -> TwoPart:
        return torch.Tensor._make_wrapper_subclass(  # type: ignore[attr-defined,no-any-return]
            cls, high.shape, dtype=high.dtype, device=high.device, requires_grad=False
        )

    def __init__(self, high: torch.Tensor, low: torch.Tensor) -> None:
        self.high, self.low = high, low

    def __tensor_flatten__(self) -> tuple[list[str], None]:
        return ["high", "low"], None

    @classmethod
    def __tensor_unflatten__(cls, inner: dict[str, torch.Tensor], context: None, size: Any, stride: Any) -> TwoPart:
        return cls(inner["high"], inner["low"])

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func is torch.ops.aten.detach.default:
            (tensor,) = args
            return cls(tensor.high.detach(), tensor.low.detach())
        plain = pytree.tree_map_only(cls, lambda t: t.high.dequantize() + t.low.dequantize(), (args, kwargs or {}))
        return func(*plain[0], **plain[1])


class Opaque(torch.Tensor):
    """A subclass without the flatten protocol: it cannot be split into plain tensors."""


def quantized_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    for index in (0, 2):
        layer = model[index]
        layer.weight = nn.Parameter(ScaledInt8.quantize(layer.weight.detach()), requires_grad=False)
    return model


def round_trip(model: Any, **options: Any) -> tuple[Any, ModelPayload]:
    backend = NNBackend()
    payload = backend.extract(model)
    return backend.rebuild(payload, LoadOptions(**options)), payload


def in_storages(tensor: torch.Tensor, payload: ModelPayload) -> bool:
    spans = [(int(b.ctypes.data), int(b.ctypes.data) + b.nbytes) for b in payload.table.storages]
    return any(start <= tensor.data_ptr() < end for start, end in spans)


def test_subclass_weights_round_trip_as_their_inner_tensors() -> None:
    model = quantized_mlp()
    x = torch.randn(4, 32)
    rebuilt, payload = round_trip(model)
    assert torch.equal(rebuilt(x), model(x))
    weight = rebuilt[0].weight
    assert type(weight) is ScaledInt8 and isinstance(weight, nn.Parameter) and not weight.requires_grad
    assert weight.label == "rows"
    assert torch.equal(weight.qdata, model[0].weight.qdata) and torch.equal(weight.scale, model[0].weight.scale)
    assert in_storages(weight.qdata, payload) and in_storages(weight.scale, payload)
    # the table holds the inner tensors only: int8 values and float32 scales, not a float32 weight
    assert payload.table.nbytes == sum(
        t.numel() * t.element_size()
        for layer in (model[0], model[2])
        for t in (layer.weight.qdata, layer.weight.scale, layer.bias)
    )
    assert {entry.dtype for entry in payload.table.entries} == {torch.int8, torch.float32}


def test_unflatten_gets_the_original_size_and_stride() -> None:
    module = nn.Module()
    transposed = ScaledInt8(torch.ones(6, 4, dtype=torch.int8).t(), torch.ones(4, 1), "columns")
    module.register_buffer("weight", transposed)
    assert transposed.stride() == (1, 4)
    ScaledInt8.unflattened.clear()
    rebuilt, _ = round_trip(module)
    assert ScaledInt8.unflattened == [((4, 6), (1, 4))]
    assert rebuilt.weight.stride() == (1, 4) and type(rebuilt.weight) is ScaledInt8


def test_one_subclass_object_in_two_modules_is_one_object_again() -> None:
    model = quantized_mlp()
    shared = nn.Linear(32, 64)
    shared.weight = model[0].weight  # the same ScaledInt8 parameter, reachable from two modules
    holder = nn.ModuleDict({"mlp": model, "other": shared})
    rebuilt, payload = round_trip(holder)
    assert rebuilt["other"].weight is rebuilt["mlp"][0].weight
    once = model[0].weight.qdata.nbytes + model[0].weight.scale.nbytes
    twice = NNBackend().extract(nn.ModuleDict({"mlp": quantized_mlp(), "other": quantized_mlp()[0]}))
    assert payload.table.nbytes + once == twice.table.nbytes


def test_inner_tensors_shared_by_two_subclass_objects_stay_shared() -> None:
    qdata, scale = torch.randint(-5, 5, (8, 8), dtype=torch.int8), torch.rand(8, 1)
    module = nn.Module()
    module.register_buffer("a", ScaledInt8(qdata, scale, "a"))
    module.register_buffer("b", ScaledInt8(qdata, scale, "b"))
    rebuilt, payload = round_trip(module)
    assert rebuilt.a is not rebuilt.b and (rebuilt.a.label, rebuilt.b.label) == ("a", "b")
    assert rebuilt.a.qdata is rebuilt.b.qdata and rebuilt.a.scale is rebuilt.b.scale
    assert payload.table.nbytes == qdata.nbytes + scale.nbytes


def test_a_subclass_of_subclasses_is_flattened_recursively() -> None:
    torch.manual_seed(1)
    weight = torch.randn(16, 8)
    high = ScaledInt8.quantize(weight, "high")
    low = ScaledInt8.quantize(weight - high.dequantize(), "low")
    layer = nn.Linear(8, 16)
    layer.weight = nn.Parameter(TwoPart(high, low), requires_grad=False)
    _, tensors = split_tensors(layer)
    assert all(type(t) in (torch.Tensor, nn.Parameter) for t in tensors)
    assert [name for name, _ in tensor_names(layer, tensors)] == [
        ["weight.high.qdata"],
        ["weight.high.scale"],
        ["weight.low.qdata"],
        ["weight.low.scale"],
        ["bias"],
    ]
    x = torch.randn(3, 8)
    rebuilt, payload = round_trip(layer)
    assert type(rebuilt.weight) is TwoPart and type(rebuilt.weight.low) is ScaledInt8
    assert rebuilt.weight.low.label == "low" and in_storages(rebuilt.weight.low.qdata, payload)
    assert torch.equal(rebuilt(x), layer(x))


def test_fast_load_gives_the_subclass_without_the_parameter_wrapper() -> None:
    model = quantized_mlp()
    x = torch.randn(2, 32)
    rebuilt, _ = round_trip(model, use_fast_load=True)
    assert type(rebuilt[0].weight) is ScaledInt8 and not isinstance(rebuilt[0].weight, nn.Parameter)
    assert torch.equal(rebuilt(x), model(x))


def test_writable_load_gives_private_inner_tensors() -> None:
    model = quantized_mlp()
    rebuilt, payload = round_trip(model, writable=True)
    weight = rebuilt[0].weight
    assert not in_storages(weight.qdata, payload) and not in_storages(weight.scale, payload)
    weight.qdata.add_(1)
    assert not torch.equal(weight.qdata, model[0].weight.qdata)
    assert torch.equal(NNBackend().rebuild(payload, LoadOptions())[0].weight.qdata, model[0].weight.qdata)


def test_a_subclass_without_the_protocol_is_refused_naming_it_and_what_it_lacks() -> None:
    module = nn.Module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that a subclass without __torch_function__ changes is odd
        module.register_buffer("odd", torch.ones(3).as_subclass(Opaque))
    with pytest.raises(UnsupportedModelError, match=r"Opaque\) without __tensor_flatten__ and __tensor_unflatten__"):
        NNBackend().extract(module)


def test_build_table_refuses_a_subclass_given_whole_and_says_to_flatten_it() -> None:
    weight = ScaledInt8.quantize(torch.randn(4, 4))
    with pytest.raises(UnsupportedModelError, match="ScaledInt8.*split_tensors"):
        build_table([("w", weight)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao.quantization's own
def test_torch_ao_dynamic_quantization_is_refused_with_the_torchao_route() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    with pytest.raises(UnsupportedModelError, match=r"Module '0' is torch\.ao\.nn\.quantized.*torchao.*quantize_"):
        NNBackend().extract(quantized)


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch warns that quantized tensors are deprecated
def test_a_torch_ao_quantized_tensor_is_refused_with_the_torchao_route() -> None:
    module = nn.Module()
    module.register_buffer("q", torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.qint8))
    with pytest.raises(UnsupportedModelError, match=r"'q' is a quantized tensor of torch\.ao.*torchao"):
        NNBackend().extract(module)
