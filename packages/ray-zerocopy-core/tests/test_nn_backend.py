"""The eager backend without Ray: extract and rebuild give the same model, zero-copy."""

from __future__ import annotations

import pickle

import pytest
import torch
from core_models import TiedLM, round_trip
from shm_tables import stored_in_shared_memory
from torch import nn

from ray_zerocopy_core.errors import UnsupportedModelError
from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.plugin import LoadOptions

ALL_DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.complex64,
    torch.complex128,
]


def test_outputs_equal_bit_for_bit(tied_lm: TiedLM) -> None:
    tokens = torch.randint(0, 50, (3, 7))
    rebuilt = round_trip(tied_lm)
    assert torch.equal(rebuilt(tokens), tied_lm(tokens))


def test_rebuilt_model_is_eval_with_frozen_parameters(tied_lm: TiedLM) -> None:
    tied_lm.train()
    rebuilt = round_trip(tied_lm)
    assert not rebuilt.training
    params = list(rebuilt.parameters())
    assert params and all(type(p) is nn.Parameter and not p.requires_grad for p in params)


def test_tied_weights_stay_tied(tied_lm: TiedLM) -> None:
    rebuilt = round_trip(tied_lm)
    assert rebuilt.head.weight is rebuilt.embed.weight
    payload = NNBackend().extract(tied_lm)
    unique_bytes = sum(p.numel() * p.element_size() for p in tied_lm.parameters())  # parameters() dedups
    assert payload.table.nbytes == unique_bytes


def test_views_of_one_storage_share_it_again() -> None:
    module = nn.Module()
    base = torch.arange(12, dtype=torch.float32)
    module.register_buffer("whole", base)
    module.register_buffer("tail", base[6:])
    module.register_buffer("grid", base.view(3, 4).t())  # non-contiguous
    rebuilt = round_trip(module)
    assert torch.equal(rebuilt.grid, base.view(3, 4).t())
    assert not rebuilt.grid.is_contiguous()
    assert rebuilt.tail.data_ptr() == rebuilt.whole.data_ptr() + 6 * 4
    assert NNBackend().extract(module).table.nbytes == 12 * 4


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_every_dtype_round_trips(dtype: torch.dtype) -> None:
    module = nn.Module()
    raw = torch.randint(0, 255, (5, 3), dtype=torch.uint8)
    values = raw.view(torch.int8).to(dtype) if dtype.is_complex else raw[:, :1].repeat(1, dtype.itemsize * 3)
    if not dtype.is_complex:
        values = values.contiguous().view(dtype)
    module.register_buffer("values", values)
    module.weight = nn.Parameter(torch.ones(2), requires_grad=False)
    rebuilt = round_trip(module)
    assert rebuilt.values.dtype == dtype
    assert rebuilt.values.shape == values.shape
    assert torch.equal(rebuilt.values.view(torch.uint8), values.view(torch.uint8))


def test_bfloat16_model_forward_matches() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).to(torch.bfloat16).eval()
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    assert torch.equal(round_trip(model)(x), model(x))


def test_non_persistent_buffers_and_plain_tensor_attributes_survive() -> None:
    module = nn.Module()
    module.register_buffer("running", torch.tensor([1.0, 2.0]), persistent=False)
    module.table = torch.tensor([3, 4])  # a tensor that is neither parameter nor buffer
    module.config = {"scale": 2.0}
    rebuilt = round_trip(module)
    assert torch.equal(rebuilt.running, module.running)
    assert torch.equal(rebuilt.table, module.table)
    assert rebuilt.config == {"scale": 2.0}


def test_zero_size_and_scalar_tensors() -> None:
    module = nn.Module()
    module.register_buffer("empty", torch.empty(0, 4))
    module.register_buffer("scalar", torch.tensor(7.5))
    rebuilt = round_trip(module)
    assert rebuilt.empty.shape == (0, 4)
    assert rebuilt.scalar.item() == 7.5


def test_fast_load_keeps_plain_tensors_and_outputs(tied_lm: TiedLM) -> None:
    tokens = torch.randint(0, 50, (2, 5))
    rebuilt = round_trip(tied_lm, use_fast_load=True)
    assert type(rebuilt.block[0].weight) is torch.Tensor
    assert rebuilt.head.weight is rebuilt.embed.weight
    assert torch.equal(rebuilt(tokens), tied_lm(tokens))


def test_rebuilt_tensors_alias_the_stored_bytes(tied_lm: TiedLM) -> None:
    payload = NNBackend().extract(tied_lm)
    rebuilt = NNBackend().rebuild(payload, LoadOptions())
    spans = [(int(b.ctypes.data), int(b.ctypes.data) + b.nbytes) for b in payload.table.storages]
    for tensor in [*rebuilt.parameters(), *rebuilt.buffers()]:
        assert any(start <= tensor.data_ptr() < end for start, end in spans)


def test_extract_does_not_copy_cpu_weights() -> None:
    model = TiedLM(vocab=500, dim=64)  # 125 KiB embedding; storages under 4 KiB are packed (copied)
    payload = NNBackend().extract(model)
    storage_addresses = {int(b.ctypes.data) for b in payload.table.storages}
    assert model.embed.weight.data_ptr() in storage_addresses
    assert model.block[0].weight.data_ptr() in storage_addresses  # 16 KiB
    assert len(payload.table.storages) == 3  # embedding, linear weight, one pack of the small ones


def test_writable_gives_private_copies(tied_lm: TiedLM) -> None:
    payload = NNBackend().extract(tied_lm)
    rebuilt = NNBackend().rebuild(payload, LoadOptions(writable=True))
    before = tied_lm.embed.weight.clone()
    with torch.no_grad():
        rebuilt.embed.weight.add_(1)
    assert torch.equal(tied_lm.embed.weight, before)
    assert rebuilt.head.weight is rebuilt.embed.weight  # still tied in the copy


def test_skeleton_carries_no_weight_bytes() -> None:
    small = nn.Linear(8, 8)
    big = nn.Linear(1024, 1024)
    small_skeleton = NNBackend().extract(small).skeleton
    big_skeleton = NNBackend().extract(big).skeleton
    assert abs(len(big_skeleton) - len(small_skeleton)) < 64
    assert len(big_skeleton) < 4096


def test_payload_pickles_without_the_bytes_in_band(tied_lm: TiedLM) -> None:
    payload = NNBackend().extract(tied_lm)
    buffers: list[pickle.PickleBuffer] = []
    in_band = pickle.dumps(payload, protocol=5, buffer_callback=buffers.append)
    assert len(in_band) < 8192
    assert sum(memoryview(b).nbytes for b in buffers) >= payload.table.nbytes


def test_meta_device_is_refused_with_the_fix() -> None:
    with torch.device("meta"):
        model = nn.Linear(4, 4)
    with pytest.raises(UnsupportedModelError, match="meta.*to_empty"):
        NNBackend().extract(model)


def test_sparse_tensor_is_refused_with_the_fix() -> None:
    module = nn.Module()
    module.register_buffer("sparse", torch.eye(3).to_sparse())
    with pytest.raises(UnsupportedModelError, match="to_dense"):
        NNBackend().extract(module)


def test_nested_tensor_is_refused_with_the_fix() -> None:
    module = nn.Module()
    module.nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(UnsupportedModelError, match="nested"):
        NNBackend().extract(module)


def test_every_storage_is_aligned_for_every_dtype_after_a_store_like_rays() -> None:
    """Small buffers of a 16-byte dtype after an odd-sized one (Ray aligns buffers under 2 KiB to 8 bytes only)."""
    module = nn.Module()
    module.register_buffer("flags", torch.tensor([1, 2, 3], dtype=torch.int8))
    module.register_buffer("small", torch.arange(5.0).to(torch.complex128))
    module.register_buffer("other", torch.arange(9.0).to(torch.complex128) * 1j)
    module.register_buffer("big", torch.arange(600.0).to(torch.complex128))
    payload = NNBackend().extract(module)
    stored = stored_in_shared_memory(payload.table, first_offset=8)
    assert all(int(buffer.ctypes.data) % 64 == 0 for buffer in stored.storages)
    stored_payload = type(payload)(payload.backend, payload.skeleton, stored)
    rebuilt = NNBackend().rebuild(stored_payload, LoadOptions())
    for name, tensor in module.named_buffers():
        assert torch.equal(getattr(rebuilt, name), tensor), name
    assert payload.table.nbytes == 3 + 5 * 16 + 9 * 16 + 600 * 16
