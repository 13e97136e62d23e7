"""Faults on a real local Ray: restarts reload, a dead owner is a clear error, no leaks.

Object-store usage is read from the raylet's own store statistics
(``object_store_bytes_used``, what ``ray memory --stats-only`` prints): it counts the
bytes of every object allocated in this node's plasma store, so a leaked model would
stay in it. Ray frees objects asynchronously, so the checks poll with a deadline.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import ray
import torch
from models import MIB, Loaded, in_object_store, process_id
from object_store import wait_for_store_at_most
from torch import nn

from ray_zerocopy import ActorWrapper, WeightsUnavailableError
from ray_zerocopy.errors import WeightsLostError

pytestmark = pytest.mark.usefixtures("ray_local")


def model_of(mib: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(256, mib * MIB // (256 * 4), bias=False)


#: A loading actor that Ray restarts once (reloading in ``__init__``) and never retries a call on.
Predictor = Loaded.options(max_restarts=1, max_task_retries=0)


def crash(model: Any) -> None:
    os._exit(1)


def wait_for_restart(actor: Any, old_pid: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = ray.get(actor.apply.remote(process_id), timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
            time.sleep(0.5)
            continue
        if pid != old_pid:
            return int(pid)
    raise AssertionError("the actor did not restart in time")


@pytest.mark.parametrize("how", ["os_exit", "ray_kill"])
def test_killed_actor_restarts_and_reloads(how: str) -> None:
    wrapper = ActorWrapper(model_of(4))
    actor = Predictor.remote(wrapper)
    x = torch.randn(8, 256)
    before = ray.get(actor.call.remote(x), timeout=120)
    old_pid = ray.get(actor.apply.remote(process_id))

    if how == "os_exit":
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.apply.remote(crash), timeout=120)
    else:
        ray.kill(actor, no_restart=False)

    assert wait_for_restart(actor, old_pid) != old_pid
    assert ray.get(actor.apply.remote(in_object_store), timeout=120)
    assert torch.equal(ray.get(actor.call.remote(x), timeout=120), before)
    ray.kill(actor)


@ray.remote(num_cpus=0.1)
class Owner:
    """Wraps a model itself, so this actor (not the driver) owns the stored weights."""

    def wrap(self) -> ActorWrapper:
        self.wrapper = ActorWrapper(model_of(2, seed=1))
        return self.wrapper


@ray.remote(num_cpus=0.1)
def try_load(wrapper: ActorWrapper) -> tuple[str, str]:
    try:
        model = wrapper.load()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "loaded", type(model).__name__


def test_owner_gone_is_a_clear_error_not_a_hang() -> None:
    owner = Owner.remote()
    wrapper = ray.get(owner.wrap.remote(), timeout=120)
    early = Loaded.options(max_restarts=0).remote(wrapper)
    x = torch.randn(2, 256)
    expected = ray.get(early.call.remote(x), timeout=120)
    assert ray.get(try_load.remote(wrapper), timeout=120) == ("loaded", "Linear")

    ray.kill(owner)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(owner.wrap.remote(), timeout=120)
    # An actor that loaded before the owner died keeps its mapping: it still works.
    assert torch.equal(ray.get(early.call.remote(x), timeout=120), expected)
    ray.kill(early)

    # Once nobody maps the bytes any more, Ray deletes the owner's objects; from then on
    # every load fails fast and says why. (Each attempt is bounded by the get timeout.)
    started = time.monotonic()
    attempts = []
    while time.monotonic() - started < 60:
        attempts.append(ray.get(try_load.remote(wrapper), timeout=120))
        if attempts[-1][0] != "loaded":
            break
        time.sleep(0.5)
    kind, message = attempts[-1]
    assert kind == WeightsLostError.__name__, attempts  # a WeightsUnavailableError: the owner is gone
    assert "owner" in message and "ray_zerocopy.publish" in message
    with pytest.raises(WeightsUnavailableError, match="Keep the wrapper alive in a long-lived process"):
        wrapper.load()
    assert issubclass(WeightsLostError, WeightsUnavailableError)
    print(f"WeightsLostError after {time.monotonic() - started:.1f} s, {len(attempts)} attempt(s)")


@ray.remote(num_cpus=0.1)
class Loader:
    def checksum(self, wrapper: ActorWrapper) -> float:
        model = wrapper.load()
        return float(model.weight.double().sum())


def test_wrap_and_drop_cycles_do_not_leak_object_store_memory() -> None:
    loader = Loader.remote()
    ray.get(loader.checksum.remote(ActorWrapper(model_of(1))))  # worker warm
    baseline = wait_for_store_at_most(0, timeout=10)
    model = model_of(8)
    expected = float(model.weight.detach().double().sum())
    size = 8 * MIB
    readings = []
    for _ in range(20):
        wrapper = ActorWrapper(model)
        assert ray.get(loader.checksum.remote(wrapper), timeout=120) == expected
        local = wrapper.load()
        assert float(local.weight.double().sum()) == expected
        del local, wrapper
        readings.append(wait_for_store_at_most(baseline + size // 2))
    print(f"store bytes used: baseline {baseline}, after each cycle {readings}")
    # Every cycle's model is gone again before the next: memory is flat, not 20 x 8 MiB.
    assert max(readings) <= baseline + size // 2, readings
    ray.kill(loader)
