"""The jit backend without Ray: weightless skeletons, swapped-in tensors, clear refusals."""

from __future__ import annotations

import io
import warnings
from typing import Any

import pytest
import torch
from jit_models import Tower, payload_of, round_trip, script, torchscript_allowed, trace, trained_tower
from torch import nn

from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.plugin import LoadOptions
from ray_zerocopy_core.registry import backend_for
from ray_zerocopy_jit.backend import INLINED_WARNING_BYTES, JITBackend, find_slots, inlined_tensor_bytes

X = torch.randn(4, 16)


def _storage_ptrs(model: torch.jit.ScriptModule) -> set[int]:
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors if t.numel()}


def test_outputs_equal_bit_for_bit(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module)
    assert isinstance(rebuilt, torch.jit.ScriptModule)
    assert torch.equal(rebuilt(X), script_module(X))


def test_rebuilt_weights_alias_the_table(script_module: torch.jit.ScriptModule) -> None:
    payload = payload_of(script_module)
    buffers = [(int(b.ctypes.data), int(b.ctypes.data) + b.nbytes) for b in payload.table.storages]
    rebuilt = JITBackend().rebuild(payload, LoadOptions())
    named = [*rebuilt.named_parameters(), *rebuilt.named_buffers()]
    assert len(named) >= 10
    for name, tensor in named:
        address = tensor.data_ptr()
        assert any(start <= address < end for start, end in buffers), name


def test_rebuilt_model_is_eval_with_frozen_parameters(script_module: torch.jit.ScriptModule) -> None:
    script_module.train()
    rebuilt = round_trip(script_module)
    assert not rebuilt.training
    assert all(not m.training for m in rebuilt.modules())
    params = list(rebuilt.parameters())
    assert params and all(isinstance(p, nn.Parameter) and not p.requires_grad for p in params)


def test_buffers_are_swapped_too(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module)
    original = dict(script_module.named_buffers())
    loaded = dict(rebuilt.named_buffers())
    assert set(loaded) == set(original) >= {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"}
    for name, tensor in loaded.items():
        assert torch.equal(tensor, original[name]), name
    assert {s.qualified_name for s in find_slots(script_module)[0]} >= set(original)


def test_nested_submodules_keep_their_weights(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module)
    original = dict(script_module.named_parameters())
    loaded = dict(rebuilt.named_parameters())
    assert "blocks.2.0.weight" in loaded and set(loaded) == set(original)
    for name, tensor in loaded.items():
        assert torch.equal(tensor, original[name]), name


def test_tied_weights_stored_once_and_tied_again(script_module: torch.jit.ScriptModule) -> None:
    payload = payload_of(script_module)
    rebuilt = JITBackend().rebuild(payload, LoadOptions())
    assert rebuilt.head.weight.data_ptr() == rebuilt.embed.weight.data_ptr()
    assert rebuilt.head.weight is rebuilt.embed.weight
    distinct = {t.data_ptr(): t.nbytes for t in [*script_module.parameters(), *script_module.buffers()]}
    assert payload.table.nbytes <= sum(distinct.values()) + Tower().scale.nbytes


def test_shared_submodule_shares_storage() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = self.a

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    module = script(Twice().eval())
    payload = payload_of(module)
    assert payload.table.nbytes == (8 * 8 + 8) * 4
    rebuilt = JITBackend().rebuild(payload, LoadOptions())
    assert rebuilt.a.weight.data_ptr() == rebuilt.b.weight.data_ptr()
    x = torch.randn(2, 8)
    assert torch.equal(rebuilt(x), module(x))


def test_exported_methods_beyond_forward() -> None:
    module = script(trained_tower())
    rebuilt = round_trip(module)
    assert torch.equal(rebuilt.embed_only(X), module.embed_only(X))


def test_plain_tensor_attribute_is_shared_not_inlined() -> None:
    module = script(trained_tower())
    slots, _ = find_slots(module)
    assert "scale" in {slot.qualified_name for slot in slots}
    rebuilt = round_trip(module)
    assert torch.equal(rebuilt.scale, module.scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float_dtypes(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    module = script(nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16)).eval().to(dtype))
    rebuilt = round_trip(module)
    x = torch.randn(3, 16, dtype=dtype)
    assert getattr(rebuilt, "0").weight.dtype == dtype
    assert torch.equal(rebuilt(x), module(x))


class _Float8Holder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(4, 4).to(torch.float8_e4m3fn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w.to(torch.float32)


def test_float8_buffer_keeps_its_bytes() -> None:
    module = script(_Float8Holder())
    rebuilt = round_trip(module)
    assert rebuilt.w.dtype == torch.float8_e4m3fn
    assert torch.equal(rebuilt.w.view(torch.uint8), module.w.view(torch.uint8))
    assert torch.equal(rebuilt(X[:, :4]), module(X[:, :4]))


def test_skeleton_holds_no_weight_bytes() -> None:
    payload = payload_of(script(trained_tower()))
    slots = len(payload.table.entries)
    assert inlined_tensor_bytes(payload.skeleton) <= slots * 8
    assert payload.table.nbytes > 4 * 16 * 16


def test_skeleton_size_does_not_grow_with_the_weights() -> None:
    def wide(dim: int) -> nn.Module:
        return nn.Sequential(nn.Linear(dim, dim, bias=False), nn.ReLU(), nn.Linear(dim, dim, bias=False)).eval()

    small = payload_of(script(wide(724)))  # 4 MiB of float32
    large = payload_of(script(wide(2896)))  # 64 MiB
    assert small.table.nbytes == pytest.approx(4 * 2**20, rel=0.01)
    assert large.table.nbytes == pytest.approx(64 * 2**20, rel=0.01)
    assert abs(len(large.skeleton) - len(small.skeleton)) < 4096
    assert len(large.skeleton) < 64 * 1024


def test_extract_leaves_the_model_as_it_was(script_module: torch.jit.ScriptModule) -> None:
    before = {name: (t, t.clone()) for name, t in [*script_module.named_parameters(), *script_module.named_buffers()]}
    expected = script_module(X)
    payload_of(script_module)
    after = dict([*script_module.named_parameters(), *script_module.named_buffers()])
    for name, (tensor, values) in before.items():
        assert after[name] is tensor and torch.equal(after[name], values), name
    assert torch.equal(script_module(X), expected)


def test_extract_restores_the_weights_when_saving_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    module = script(trained_tower())
    weight = module.embed.weight

    def failing_save(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.jit, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        payload_of(module)
    assert module.embed.weight is weight and module.head.weight is weight


def test_module_loaded_from_a_file_round_trips(script_module: torch.jit.ScriptModule) -> None:
    buffer = io.BytesIO()
    with torchscript_allowed():
        torch.jit.save(script_module, buffer)
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
    assert torch.equal(round_trip(loaded)(X), script_module(X))


def test_writable_gives_a_private_copy(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module, writable=True)
    assert not _storage_ptrs(rebuilt) & _storage_ptrs(script_module)
    original = script_module.embed.weight.clone()
    with torch.no_grad():
        rebuilt.embed.weight.add_(1)
    assert torch.equal(script_module.embed.weight, original)
    assert torch.equal(rebuilt.head.weight, rebuilt.embed.weight)  # still tied in the copy


def test_fast_load_runs_the_same(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module, use_fast_load=True)
    assert torch.equal(rebuilt(X), script_module(X))


@pytest.mark.parametrize("how", ["freeze", "optimize_for_inference"])
def test_frozen_module_is_refused_with_the_fix(how: str) -> None:
    module = script(trained_tower())
    with torchscript_allowed():
        frozen = torch.jit.freeze(module.eval()) if how == "freeze" else torch.jit.optimize_for_inference(module.eval())
    with pytest.raises(UnsupportedModelError, match="frozen") as info:
        payload_of(frozen)
    assert "before freezing" in str(info.value)


def test_large_graph_constants_warn_that_workers_copy_them() -> None:
    class WithTable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 16)
            self.table = torch.randn(256, 256)  # a plain attribute: tracing inlines it

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x) + self.table[0, :16]

    traced = trace(WithTable().eval(), X)
    with pytest.warns(UserWarning, match="own copy"):
        payload = payload_of(traced)
    assert inlined_tensor_bytes(payload.skeleton) >= INLINED_WARNING_BYTES
    assert torch.equal(JITBackend().rebuild(payload, LoadOptions())(X), traced(X))


@pytest.fixture
def torch_deprecating_torchscript(monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.jit.save``/``load`` warn as torch 2.13 words it, on any torch (2.4 does not warn)."""
    for call in ("save", "load"):
        original = getattr(torch.jit, call)

        def warning_call(*args: Any, _original: Any = original, _call: str = call, **kwargs: Any) -> Any:
            message = f"`torch.jit.{_call}` is deprecated. Please switch to `torch.export`."
            warnings.warn(message, DeprecationWarning, stacklevel=2)
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.jit, call, warning_call)


def test_no_torchscript_warnings_from_our_own_calls(script_module: torch.jit.ScriptModule) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        round_trip(script_module)
    assert [str(w.message) for w in caught] == []


@pytest.mark.usefixtures("torch_deprecating_torchscript")
def test_torchs_deprecation_of_our_own_calls_is_silenced(script_module: torch.jit.ScriptModule) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        round_trip(script_module)
    assert [str(w.message) for w in caught] == []


@pytest.mark.usefixtures("torch_deprecating_torchscript")
def test_users_own_torchscript_calls_still_warn(script_module: torch.jit.ScriptModule) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        round_trip(script_module)
        torch.jit.save(script_module, io.BytesIO())
    assert caught and {w.category for w in caught} <= {DeprecationWarning, FutureWarning}
    assert all("torch.jit.save" in str(w.message) for w in caught)


def test_registry_picks_jit_for_script_modules(script_module: torch.jit.ScriptModule) -> None:
    assert backend_for(script_module).name == "jit"
    assert backend_for(trained_tower()).name == "nn"


def test_eager_modules_are_not_handled(script_module: torch.jit.ScriptModule) -> None:
    assert not JITBackend().handles(trained_tower())
    assert JITBackend().handles(script_module)


def test_meta_weights_are_refused() -> None:
    with torch.device("meta"):
        model = nn.Linear(4, 4)
    module = script(model)
    with pytest.raises(UnsupportedModelError, match="meta"):
        payload_of(module)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_gets_every_tensor_and_constant(script_module: torch.jit.ScriptModule) -> None:
    rebuilt = round_trip(script_module, device="cuda:0")
    tensors = dict([*rebuilt.named_parameters(), *rebuilt.named_buffers()])
    assert tensors and all(t.device.type == "cuda" for t in tensors.values())
    assert rebuilt.head.weight.data_ptr() == rebuilt.embed.weight.data_ptr()
    out = rebuilt(X.cuda())  # traced graph constants (the Tower's scale) were mapped to cuda too
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), script_module(X), rtol=1e-4, atol=1e-5)
