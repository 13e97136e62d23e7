"""What the plugin SDK gives every backend: slots, parameter re-wrapping, the default ``handles``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ray_zerocopy_core.plugin import Backend, LoadOptions, ModelPayload, build_table, index_tensors, materialize


def test_index_tensors_stores_a_tensor_once_however_many_places_hold_it() -> None:
    shared, other = torch.ones(4), torch.zeros(2)
    slots, tensors = index_tensors(
        [("encoder", "weight", shared, True), ("decoder", "weight", shared, False), ("", "scale", other, False)]
    )
    assert [name for name, _ in tensors] == ["encoder.weight", "scale"]
    assert tensors[0][1] is shared and tensors[1][1] is other
    assert [slot.index for slot in slots] == [0, 0, 1]
    assert [slot.is_parameter for slot in slots] == [True, False, False]


def _table() -> Any:
    return build_table([("w", nn.Parameter(torch.ones(3))), ("b", torch.zeros(3)), ("v", torch.ones(2))])


def test_materialize_gives_the_stored_parameters_unless_fast() -> None:
    weight, buffer, _ = materialize(_table(), LoadOptions(writable=True))
    assert isinstance(weight, nn.Parameter) and not weight.requires_grad
    assert not isinstance(buffer, nn.Parameter)
    fast = materialize(_table(), LoadOptions(writable=True, use_fast_load=True))
    assert not any(isinstance(t, nn.Parameter) for t in fast)


def test_materialize_parameters_names_exactly_the_parameters_fast_load_or_not() -> None:
    for fast in (False, True):
        tensors = materialize(_table(), LoadOptions(writable=True, use_fast_load=fast), parameters=[1, 2])
        assert [isinstance(t, nn.Parameter) for t in tensors] == [False, True, True]
    assert not any(isinstance(t, nn.Parameter) for t in materialize(_table(), LoadOptions(), parameters=()))


class Vectors:
    """Not a module: a model type of a third-party backend."""


class VectorsBackend(Backend):
    name: ClassVar[str] = "vectors"
    model_types: ClassVar[tuple[type, ...]] = (Vectors,)

    def extract(self, model: Any) -> ModelPayload:
        return ModelPayload(self.name, b"", build_table([]))

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        return Vectors()


def test_a_backend_naming_the_protocol_as_base_gets_handles_from_model_types() -> None:
    backend = VectorsBackend()
    assert isinstance(backend, Backend)
    assert backend.handles(Vectors())
    assert not backend.handles(nn.Linear(2, 2))
