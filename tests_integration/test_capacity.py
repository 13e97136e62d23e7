"""Capacity and lifetime on a small object store (128 MiB): refusal up front, spilling, release().

A model that can never fit is refused before anything is written, with both sizes in
the message. Models that fit one at a time but not all together are spilled to disk by
Ray and come back intact. ``release()`` drops a wrapper's hold on its objects.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
import ray
import torch
from environment import local_ray
from models import MIB, Loaded
from object_store import store_bytes_used, store_stats, wait_for_store_at_most
from torch import nn

from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper
from ray_zerocopy.errors import ObjectStoreCapacityError, WrapperReleasedError

GIB = 1024**3
STORE = 128 * MIB


@pytest.fixture(scope="module", autouse=True)
def ray_small_store() -> Iterator[None]:
    """A local Ray whose object store holds 128 MiB, for this module only."""
    with local_ray(object_store_memory=STORE):
        yield


class Blob(nn.Module):
    """A model of one flat parameter of ``mib`` MiB (left uninitialised unless ``seed``)."""

    def __init__(self, mib: int, seed: int | None = None) -> None:
        super().__init__()
        n = mib * MIB // 4
        if seed is None:
            self.weight = nn.Parameter(torch.empty(n), requires_grad=False)
        else:
            generator = torch.Generator().manual_seed(seed)
            self.weight = nn.Parameter(torch.rand(n, generator=generator), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[: x.numel()]


def digest(model: nn.Module) -> str:
    return hashlib.sha256(model.weight.detach().numpy().tobytes()).hexdigest()


def fmt(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / MIB:.1f} MiB"


def test_model_larger_than_the_store_is_refused_up_front() -> None:
    before = wait_for_store_at_most(STORE)
    capacity = max(n["Resources"]["object_store_memory"] for n in ray.nodes() if n["Alive"])
    model = Blob(160)  # uninitialised: costs address space, not memory
    with pytest.raises(ObjectStoreCapacityError) as caught:
        ActorWrapper(model)
    message = str(caught.value)
    assert "needs 0.16 GiB" in message or "needs 160." in message, message
    assert f"holds {fmt(capacity)}" in message, message
    assert "object_store_memory" in message  # says how to fix it
    # Nothing was written: the refusal came before the put, not as ObjectStoreFullError.
    assert store_bytes_used() <= before


@ray.remote(num_cpus=0.1)
def digest_in_worker(wrapper: ActorWrapper) -> str:
    return digest(wrapper.load())


def test_models_spilled_to_disk_load_intact() -> None:
    models = [Blob(40, seed=i) for i in range(5)]  # 200 MiB in all, store 128 MiB
    expected = [digest(m) for m in models]
    wrappers = [ActorWrapper(m) for m in models]
    assert int(store_stats().spilled_bytes_total) > 0, "Ray did not need to spill: the test proves nothing"
    # One at a time, each is restored from disk into the store and mapped zero-copy.
    for wrapper, want in zip(wrappers, expected):
        assert ray.get(digest_in_worker.remote(wrapper), timeout=300) == want
    for wrapper, want in zip(reversed(wrappers), reversed(expected)):
        assert digest(wrapper.load()) == want
    for wrapper in wrappers:
        wrapper.release()


@pytest.mark.parametrize("mode", ["actor", "task"])
def test_release_frees_the_store_and_later_use_says_so(mode: str) -> None:
    baseline = wait_for_store_at_most(MIB)
    wrapper = ModelWrapper.from_model(Blob(16, seed=0), mode=mode)
    assert store_bytes_used() >= baseline + 16 * MIB
    assert wrapper.nbytes == 16 * MIB

    wrapper.release()
    wrapper.release()  # idempotent
    assert wrapper.nbytes == 0
    assert wait_for_store_at_most(baseline + MIB) <= baseline + MIB

    with pytest.raises(WrapperReleasedError, match="release\\(\\) was called.*wrap the model again"):
        wrapper.load()
    with pytest.raises(WrapperReleasedError):
        _ = wrapper.constructor_kwargs
    if mode == "task":
        with pytest.raises(WrapperReleasedError):
            wrapper(torch.ones(4))
    assert "models=[]" in repr(wrapper)


def test_release_leaves_actors_that_loaded_working() -> None:
    """release() drops the wrapper's references; a loaded actor keeps the object alive."""
    model = Blob(16, seed=3)
    wrapper = ActorWrapper(model)
    holder = Loaded.remote(wrapper)
    assert ray.get(holder.apply.remote(digest), timeout=120) == digest(model)
    baseline = store_bytes_used()
    wrapper.release()
    assert ray.get(holder.apply.remote(digest), timeout=120) == digest(model)
    ray.kill(holder)
    assert wait_for_store_at_most(baseline - 16 * MIB) <= baseline - 16 * MIB


def test_task_wrappers_are_released_too() -> None:
    wrapper = TaskWrapper(Blob(1, seed=4))
    x = torch.ones(4)
    assert torch.equal(wrapper(x), x * Blob(1, seed=4).weight[:4])
    wrapper.release()
    with pytest.raises(WrapperReleasedError):
        wrapper(x)
