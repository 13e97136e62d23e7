"""The export backend without Ray: weightless skeletons, zero-copy weights, clear refusals."""

from __future__ import annotations

import inspect
import io
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest
import torch
from export_models import DIM, Mlp, Tower, export_mlp, export_tower, payload_of, round_trip, tokens, trained_tower
from torch import nn
from torch.export import ExportedProgram

import ray_zerocopy_export.backend as backend_module
from ray_zerocopy_core.plugin import Backend, LoadOptions, UnsupportedModelError
from ray_zerocopy_core.registry import backend_for, backend_names
from ray_zerocopy_export import ExportBackend, ZeroCopyExportedProgram
from ray_zerocopy_export.backend import ProgramSkeleton, find_slots, pytree_modules

X = tokens()


def _table_ranges(program: ExportedProgram) -> tuple[Any, list[tuple[int, int]]]:
    payload = payload_of(program)
    return payload, [(int(b.ctypes.data), int(b.ctypes.data) + b.nbytes) for b in payload.table.storages]


def _inside(tensor: torch.Tensor, ranges: list[tuple[int, int]]) -> bool:
    return any(start <= tensor.data_ptr() < end for start, end in ranges)


def test_is_a_backend_found_by_the_registry(program: ExportedProgram) -> None:
    assert isinstance(ExportBackend(), Backend)
    assert "export" in backend_names()
    assert backend_for(program).name == "export"
    assert backend_for(nn.Linear(2, 2)).name == "nn"


@pytest.mark.parametrize("options", [LoadOptions(), LoadOptions(writable=True), LoadOptions(use_fast_load=True)])
def test_outputs_equal_bit_for_bit(program: ExportedProgram, options: LoadOptions) -> None:
    rebuilt = round_trip(program, options)
    assert isinstance(rebuilt, ExportedProgram) and isinstance(rebuilt, ZeroCopyExportedProgram)
    expected = program.module()(X)
    assert torch.equal(rebuilt.module()(X), expected)
    assert torch.equal(rebuilt(X), expected)


def test_every_weight_aliases_the_table(program: ExportedProgram) -> None:
    payload, ranges = _table_ranges(program)
    rebuilt = ExportBackend().rebuild(payload, LoadOptions())
    assert set(rebuilt.state_dict) == set(program.state_dict)
    assert set(rebuilt.constants) == set(program.constants) == {"offset", "scale"}
    for name, tensor in [*rebuilt.state_dict.items(), *rebuilt.constants.items()]:
        assert _inside(tensor, ranges), name
    # The module built from the program uses the same memory: running it copies no weight.
    module = rebuilt.module()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        assert _inside(tensor, ranges), name


def test_extract_does_not_copy_the_weights() -> None:
    program = export_mlp(64)  # 16 KiB weights: large enough to be shared as they are, not packed
    _, ranges = _table_ranges(program)
    for name, tensor in program.state_dict.items():
        if tensor.nbytes >= 4096:
            assert _inside(tensor, ranges), name


def test_writable_load_is_a_private_copy(program: ExportedProgram) -> None:
    payload, ranges = _table_ranges(program)
    rebuilt = ExportBackend().rebuild(payload, LoadOptions(writable=True))
    assert not any(_inside(t, ranges) for t in rebuilt.state_dict.values())
    with torch.no_grad():
        rebuilt.state_dict["proj.bias"].add_(1)
    assert not torch.equal(rebuilt.state_dict["proj.bias"], program.state_dict["proj.bias"])


def test_parameters_stay_parameters_without_grad(program: ExportedProgram) -> None:
    for options in (LoadOptions(), LoadOptions(use_fast_load=True)):
        rebuilt = round_trip(program, options)
        for name in rebuilt.graph_signature.parameters:
            value = rebuilt.state_dict[name]
            assert isinstance(value, nn.Parameter) and not value.requires_grad, name


def test_tied_weights_stored_once_and_one_tensor_again(program: ExportedProgram) -> None:
    assert program.state_dict["head.weight"] is program.state_dict["embed.weight"]
    payload = payload_of(program)
    named = [*program.state_dict.values(), *program.constants.values(), *program.example_inputs[0]]
    assert len(payload.table.entries) == len(named) - 1
    assert payload.table.nbytes < sum(t.nbytes for t in named)  # the tied weight counted once
    rebuilt = ExportBackend().rebuild(payload, LoadOptions())
    assert rebuilt.state_dict["head.weight"] is rebuilt.state_dict["embed.weight"]
    module = rebuilt.module()
    assert module.head.weight.data_ptr() == module.embed.weight.data_ptr()


def test_dynamic_batch_size_after_load(program: ExportedProgram) -> None:
    rebuilt = round_trip(program)
    for batch in (1, 3, 33):
        x = tokens(batch, seed=batch)
        assert torch.equal(rebuilt(x), program.module()(x))
    assert {str(s) for s in rebuilt.range_constraints} == {str(s) for s in program.range_constraints}


def test_static_program_still_checks_its_shapes() -> None:
    static = export_tower(dynamic=False)
    rebuilt = round_trip(static)
    assert torch.equal(rebuilt(X), static.module()(X))
    # torch 2.13 says "Guard failed: tokens.size()[0] == 4" (AssertionError), torch 2.4
    # "Expected input at *args[0].shape[0] to be equal to 4, but got 5" (RuntimeError)
    guard = r"Guard failed: tokens\.size\(\)\[0\] == 4|shape\[0\] to be equal to 4, but got 5"
    with pytest.raises((AssertionError, RuntimeError), match=guard):
        rebuilt(tokens(5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_float_dtypes(dtype: torch.dtype) -> None:
    program = export_tower(dtype=dtype)
    rebuilt = round_trip(program)
    assert rebuilt.state_dict["proj.weight"].dtype == dtype
    assert torch.equal(rebuilt(X), program.module()(X))


def test_integer_and_bool_buffers_keep_their_bytes() -> None:
    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("table", torch.arange(-64, 64, dtype=torch.int8))
            self.register_buffer("mask", torch.arange(128) % 3 == 0)

        def forward(self, index: torch.Tensor) -> torch.Tensor:
            return torch.where(self.mask[index], self.table[index].to(torch.int32), 0)

    index = torch.tensor([0, 3, 5, 127])
    program = torch.export.export(Lookup(), (index,))
    rebuilt = round_trip(program)
    assert rebuilt.state_dict["table"].dtype == torch.int8 and rebuilt.state_dict["mask"].dtype == torch.bool
    assert torch.equal(rebuilt(index), program.module()(index))


def test_non_persistent_buffers_and_constants_are_shared(program: ExportedProgram) -> None:
    assert "offset" in program.graph_signature.non_persistent_buffers
    assert "scale" in program.graph_signature.lifted_tensor_constants
    payload, ranges = _table_ranges(program)
    rebuilt = ExportBackend().rebuild(payload, LoadOptions())
    for name in ("offset", "scale"):
        assert torch.equal(rebuilt.constants[name], program.constants[name]), name
        assert _inside(rebuilt.constants[name], ranges), name
    assert "offset" in dict(rebuilt.module().named_buffers())


def test_example_inputs_travel_too(program: ExportedProgram) -> None:
    rebuilt = round_trip(program)
    (args, kwargs) = rebuilt.example_inputs
    assert kwargs == {} and torch.equal(args[0], program.example_inputs[0][0])


def test_skeleton_holds_no_weight_bytes(program: ExportedProgram) -> None:
    payload = payload_of(program)
    skeleton = ProgramSkeleton.from_bytes(payload.skeleton)
    assert len(skeleton.slots) == len(program.state_dict) + len(program.constants)
    assert len(payload.skeleton) < 64 * 1024


def test_skeleton_size_does_not_grow_with_the_weights() -> None:
    small = export_mlp(64)  # 64 KiB of weights
    large = export_mlp(1024)  # 16 MiB of weights: about 250 times as much
    large_bytes = sum(t.nbytes for t in large.state_dict.values())
    assert large_bytes >= 200 * sum(t.nbytes for t in small.state_dict.values())
    small_skeleton = payload_of(small).skeleton
    large_payload = payload_of(large)
    assert large_payload.table.nbytes >= large_bytes
    assert len(large_payload.skeleton) < 64 * 1024
    assert abs(len(large_payload.skeleton) - len(small_skeleton)) <= 4 * 1024
    x = torch.randn(3, 1024)
    assert torch.equal(ExportBackend().rebuild(large_payload, LoadOptions())(x), large.module()(x))


def test_calling_the_program_reuses_one_module(program: ExportedProgram) -> None:
    rebuilt = round_trip(program)
    assert isinstance(rebuilt, ZeroCopyExportedProgram)
    assert rebuilt.cached_module() is rebuilt.cached_module()
    assert torch.equal(rebuilt(X), rebuilt.module()(X))


def test_program_loaded_from_a_pt2_file_round_trips(program: ExportedProgram) -> None:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer)
    rebuilt = round_trip(loaded)
    assert torch.equal(rebuilt(X), program.module()(X))


def test_extract_leaves_the_program_as_it_was(program: ExportedProgram) -> None:
    before = {name: (tensor, tensor.clone()) for name, tensor in program.state_dict.items()}
    payload_of(program)
    for name, (tensor, copy) in before.items():
        assert program.state_dict[name] is tensor and torch.equal(tensor, copy), name
    assert torch.equal(program.module()(X), round_trip(program)(X))


def test_no_torchscript_call(program: ExportedProgram, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing of torch.jit bound in the module (a name imported from it escapes the patch below).
    bound = [name for name, value in vars(backend_module).items() if _from_torch_jit(value)]
    assert not bound, bound

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the export backend called TorchScript")

    for name in ("save", "load", "script", "trace", "freeze"):
        monkeypatch.setattr(torch.jit, name, refuse)
    assert torch.equal(round_trip(program)(X), program.module()(X))


def _from_torch_jit(value: Any) -> bool:
    """Whether ``value`` is ``torch.jit``, one of its modules, or something defined there."""
    name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
    return isinstance(name, str) and (name == "torch.jit" or name.startswith(("torch.jit.", "torch._C._jit")))


def test_meta_weights_are_refused_with_the_fix() -> None:
    with torch.device("meta"):
        model = Mlp(8, 2)
    program = torch.export.export(model, (torch.zeros(2, 8, device="meta"),))
    with pytest.raises(UnsupportedModelError, match=r"meta.*to_empty.*load_state_dict"):
        payload_of(program)


def test_training_mode_buffer_updates_need_writable() -> None:
    model = trained_tower().train()
    program = torch.export.export(model, (X,))
    with pytest.warns(UserWarning, match=r"in place.*model\.eval\(\)"):
        payload = payload_of(program)
    with pytest.raises(UnsupportedModelError, match=r"writable=True"):
        ExportBackend().rebuild(payload, LoadOptions())
    private = ExportBackend().rebuild(payload, LoadOptions(writable=True))
    expected = torch.export.export(trained_tower().train(), (X,)).module()(X)
    assert torch.equal(private(X), expected)


def test_eval_program_gives_no_warning(program: ExportedProgram) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        payload_of(program)


def test_other_objects_are_not_handled(program: ExportedProgram) -> None:
    assert not ExportBackend().handles(Tower())
    assert ExportBackend().handles(program)


def test_find_slots_lists_each_tensor_once(program: ExportedProgram) -> None:
    slots, tensors = find_slots(program)
    assert len(slots) == len(program.state_dict) + len(program.constants)
    assert len(tensors) == len(slots) - 1  # head.weight is embed.weight
    assert {s.name for s in slots if s.is_parameter} == set(program.graph_signature.parameters)


@dataclass
class Scores:
    """A dataclass output, registered with torch's pytree in this module."""

    logits: torch.Tensor
    best: torch.Tensor


torch.export.register_dataclass(Scores, serialized_type_name=f"{__name__}.Scores")


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> Scores:
        logits = self.linear(x)
        return Scores(logits, logits.argmax(dim=-1))


def test_modules_of_output_types_are_recorded_for_the_worker() -> None:
    x = torch.randn(2, DIM)
    program = torch.export.export(Scorer().eval(), (x,))
    assert pytree_modules(program) == [__name__]
    assert ProgramSkeleton.from_bytes(payload_of(program).skeleton).modules == [__name__]
    out = round_trip(program)(x)
    assert isinstance(out, Scores) and torch.equal(out.logits, program.module()(x).logits)
    assert pytree_modules(export_tower()) == []


def test_garbage_collector_is_restored(program: ExportedProgram) -> None:
    import gc

    assert gc.isenabled()
    rebuilt = round_trip(program)
    rebuilt.module()
    assert gc.isenabled()
    gc.disable()
    try:
        round_trip(program).module()
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch's own, from deep-copying a treespec
def test_rebuilt_program_copies_and_rewraps_like_any_program(program: ExportedProgram) -> None:
    import copy

    rebuilt = round_trip(program)
    rebuilt(X)  # builds the cached module
    for clone in (copy.copy(rebuilt), copy.deepcopy(rebuilt)):
        assert torch.equal(clone(X), program.module()(X))
    assert torch.equal(round_trip(rebuilt)(X), program.module()(X))  # a loaded program can be wrapped again


def test_a_serializer_without_weight_options_saves_no_weights(
    program: ExportedProgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch 2.4's serializer always saves the weights: the backend makes it save none (no copy)."""
    from torch._export.serde import serialize as serde

    real, saved = serde.ExportedProgramSerializer, []

    class OldSerializer:  # serialize(program) only, saving the weights as torch 2.4 does
        def serialize(self, ep: ExportedProgram) -> Any:
            saved.append(serde.serialize_torch_artifact(ep.state_dict))
            if "serialize_state_dict" in inspect.signature(real.serialize).parameters:  # a newer torch
                return real().serialize(ep, serialize_state_dict=False, serialize_constants=False)
            return real().serialize(ep)

    monkeypatch.setattr(serde, "ExportedProgramSerializer", OldSerializer)
    rebuilt = round_trip(program)
    assert saved == [b""]  # the weights were not pickled into bytes
    assert serde.serialize_torch_artifact(program.state_dict) != b""  # and saving is back to normal
    assert torch.equal(rebuilt(X), program.module()(X))


def test_a_torch_whose_deserializer_takes_only_bytes_is_refused_with_the_version_needed(
    program: ExportedProgram, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._export.serde import serialize as serde

    class BytesOnlyDeserializer:  # torch 2.3's signature
        def deserialize(self, serialized_artifact: Any) -> Any:
            raise AssertionError("not to be called")

    monkeypatch.setattr(serde, "ExportedProgramDeserializer", BytesOnlyDeserializer)
    with pytest.raises(UnsupportedModelError, match=r"needs torch 2\.4 or later.*ActorWrapper\(model\)"):
        ExportBackend().extract(program)
