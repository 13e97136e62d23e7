"""The eager backend on a real local Ray: actor mode, task mode, Ray Data, legacy API."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import ray
import torch
from environment import populate_read_supported, wait_until
from models import MIB, Loaded, TiedLM, tied_lm
from torch import nn

import ray_zerocopy
import ray_zerocopy.actor
import ray_zerocopy.invoke
import ray_zerocopy_core.task_mode
from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper
from ray_zerocopy_core.inspection import aliases_object_store

pytestmark = pytest.mark.usefixtures("ray_local", "one_thread")  # references on one thread, as in workers


class Pipeline:
    """Two models and plain state, as users write them."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.ReLU()).eval()
        self.decoder = nn.Linear(32, 4).eval()
        self.scale = 3.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)) * self.scale


def inspect_model(model: nn.Module) -> dict[str, Any]:
    tensors = [*model.parameters(), *model.buffers()]
    return {
        "all_alias_store": all(aliases_object_store(t) for t in tensors),
        "training": model.training,
        "requires_grad": any(p.requires_grad for p in model.parameters()),
        "param_types": {type(p).__name__ for p in model.parameters()},
    }


def inspect_part(model: Any, attr: str) -> dict[str, Any]:
    """:func:`inspect_model` of one model of a pipeline."""
    return inspect_model(getattr(model, attr))


def tied(model: Any) -> bool:
    """Whether the head of a loaded :class:`TiedLM` is still its embedding."""
    return model.head.weight is model.embed.weight


@pytest.fixture(scope="module")
def lm() -> TiedLM:
    return tied_lm()


def test_actor_mode_outputs_equal_and_weights_alias_the_store(lm: TiedLM) -> None:
    tokens = torch.randint(0, 64, (2, 9))
    wrapper = ActorWrapper(lm)
    actors = [Loaded.remote(wrapper) for _ in range(2)]
    for actor in actors:
        assert torch.equal(ray.get(actor.call.remote(tokens)), lm(tokens))
        info = ray.get(actor.apply.remote(inspect_model))
        assert info == {
            "all_alias_store": True,
            "training": False,
            "requires_grad": False,
            "param_types": {"Parameter"},
        }
        assert ray.get(actor.apply.remote(tied))


def test_model_wrapper_actor_mode_with_pipeline_and_fast_load() -> None:
    pipeline = Pipeline()
    x = torch.randn(5, 16)
    wrapper = ModelWrapper.from_model(pipeline, mode="actor", use_fast_load=True)
    assert wrapper.model_names == ["encoder", "decoder"]
    actor = Loaded.remote(wrapper)
    assert torch.equal(ray.get(actor.call.remote(x)), pipeline(x))  # reference on one thread, as the actor
    info = ray.get(actor.apply.remote(inspect_part, "decoder"))
    assert info["all_alias_store"] and info["param_types"] == {"Tensor"}


def test_wrapper_is_small_to_pickle(lm: TiedLM) -> None:
    big = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])
    small_pickle = len(ray.cloudpickle.dumps(ActorWrapper(lm)))
    big_pickle = len(ray.cloudpickle.dumps(ActorWrapper(big)))
    assert big_pickle < 16_384 and small_pickle < 16_384  # skeleton + refs, never weights


def test_bfloat16_model_in_an_actor() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 8)).to(torch.bfloat16).eval()
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    actor = Loaded.remote(ActorWrapper(model))
    assert torch.equal(ray.get(actor.call.remote(x)), model(x))
    assert ray.get(actor.apply.remote(inspect_model))["all_alias_store"]


def test_constructor_kwargs_feed_load_pipeline_in_actor() -> None:
    pipeline = Pipeline()
    x = torch.randn(2, 16)

    @ray.remote(num_cpus=0.25)
    class Legacy:
        def __init__(self, pipeline_skeleton: Any, model_refs: Any, device: Any, use_fast_load: bool) -> None:
            with pytest.warns(DeprecationWarning):
                self.pipeline = ray_zerocopy.load_pipeline_in_actor(
                    pipeline_skeleton, model_refs, device=device, use_fast_load=use_fast_load
                )

        def call(self, x: torch.Tensor) -> torch.Tensor:
            return self.pipeline(x)

    actor = Legacy.remote(**ActorWrapper(pipeline).constructor_kwargs)
    assert torch.equal(ray.get(actor.call.remote(x)), pipeline(x))


def test_ray_data_actor_pool_matches_local_inference() -> None:
    pipeline = Pipeline()
    wrapper = ActorWrapper(pipeline)
    rows = np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)

    class Predict:
        def __init__(self, wrapper: ActorWrapper) -> None:
            self.pipeline = wrapper.load()
            self.aliased = all(aliases_object_store(p) for p in self.pipeline.encoder.parameters())

        def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.no_grad():
                out = self.pipeline(torch.from_numpy(np.stack(batch["x"])))
            return {"y": out.numpy(), "aliased": np.full(len(out), self.aliased)}

    dataset = ray.data.from_items([{"x": row} for row in rows])
    result = dataset.map_batches(
        Predict,
        fn_constructor_kwargs={"wrapper": wrapper},
        batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.25,
    ).take_all()
    got = np.stack([r["y"] for r in result])
    expected = pipeline(torch.from_numpy(rows)).detach().numpy()
    assert all(r["aliased"] for r in result)
    np.testing.assert_array_equal(np.sort(got, axis=0), np.sort(expected, axis=0))


def test_task_mode_pipeline_call_and_methods(lm: TiedLM) -> None:
    tokens = torch.randint(0, 64, (2, 6))
    wrapped = ModelWrapper.for_tasks(lm, method_names=("__call__", "encode", "whoami"))
    assert torch.equal(wrapped(tokens), lm(tokens))
    assert torch.equal(wrapped.encode(tokens), lm.encode(tokens))
    with pytest.raises(AttributeError, match=r"'generate' is not a remote method.*'__call__', 'encode'"):
        wrapped.generate(tokens)


def test_task_mode_worker_cache_reuses_the_rebuilt_model(lm: TiedLM) -> None:
    wrapped = TaskWrapper(lm, method_names=("whoami",))
    seen: dict[int, set[int]] = {}
    for _ in range(12):
        pid, model_id = wrapped.whoami()
        seen.setdefault(pid, set()).add(model_id)
    assert all(len(ids) == 1 for ids in seen.values()), seen  # one rebuild per worker


def test_task_mode_pipeline_keeps_plain_attributes_and_task_options() -> None:
    pipeline = Pipeline()
    x = torch.randn(3, 16)
    wrapped = TaskWrapper(pipeline, task_options={"num_cpus": 0.5})
    assert wrapped.scale == 3.0
    assert torch.equal(wrapped(x), pipeline(x))
    rewritten = ModelWrapper.from_model(pipeline, mode="task").load()
    assert isinstance(rewritten.encoder, ray_zerocopy_core.task_mode.RemoteModel)
    assert torch.equal(rewritten(x), pipeline(x))


def test_task_options_reach_the_task(lm: TiedLM) -> None:
    class Resources(nn.Module):
        def forward(self) -> dict[str, float]:
            return ray.get_runtime_context().get_assigned_resources()

    wrapped = TaskWrapper(Resources(), task_options={"num_cpus": 0.5})
    assert wrapped() == {"CPU": 0.5}


def test_legacy_task_and_actor_functions_warn_and_work(lm: TiedLM) -> None:
    tokens = torch.randint(0, 64, (1, 4))
    with pytest.warns(DeprecationWarning, match="TaskWrapper"):
        rewritten = ray_zerocopy.invoke.rewrite_pipeline(Pipeline())
    assert rewritten(torch.ones(1, 16)).shape == (1, 4)

    with pytest.warns(DeprecationWarning, match="ActorWrapper"):
        model_ref = ray_zerocopy.actor.prepare_model_for_actors(lm)

    @ray.remote(num_cpus=0.25)
    class Old:
        def __init__(self, model_ref: Any) -> None:  # Ray resolved the top-level ref
            self.model = ray_zerocopy.actor.load_model_in_actor(model_ref)

        def call(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.model(tokens)

    old = Old.remote(model_ref)
    assert torch.equal(ray.get(old.call.remote(tokens)), lm(tokens))
    with pytest.warns(DeprecationWarning, match="ActorWrapper"):
        direct = ray_zerocopy.load_model_in_actor(model_ref)  # the ObjectRef itself
    assert torch.equal(direct(tokens), lm(tokens))

    with pytest.warns(DeprecationWarning, match="ActorWrapper"):
        skeleton, refs = ray_zerocopy.actor.rewrite_pipeline_for_actors(Pipeline())
    assert skeleton.encoder is None and set(refs) == {"encoder", "decoder"}
    with pytest.warns(DeprecationWarning, match="ActorWrapper"):
        loaded = ray_zerocopy.actor.load_pipeline_in_actor(skeleton, refs)
    assert torch.equal(loaded(torch.ones(2, 16)), Pipeline()(torch.ones(2, 16)))


def test_wrong_mode_and_bad_arguments_say_what_to_do(lm: TiedLM) -> None:
    actor_wrapper = ActorWrapper(lm)
    with pytest.raises(ray_zerocopy.errors.WrongModeError, match=r"actor mode.*\.load\(\)"):
        actor_wrapper(torch.zeros(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="mode must be 'actor' or 'task'"):
        ModelWrapper.from_model(lm, mode="tasks")  # type: ignore[arg-type]
    with pytest.raises(ray_zerocopy.errors.WrongModeError, match="task mode only"):
        ModelWrapper.from_model(lm, mode="actor", method_names=["encode"])
    with pytest.raises(ray_zerocopy.errors.PipelineError, match="No model found.*model_attr_names"):
        ActorWrapper(object.__new__(Pipeline))
    with pytest.raises(ray_zerocopy.errors.PipelineError, match="has no attribute 'missing'"):
        ActorWrapper(Pipeline(), model_attr_names=["missing"])


@ray.remote(num_cpus=0.25)
class ResidentShmem:
    """Loads a wrapper in ``__init__`` and reports how much shared memory it has mapped in since."""

    def __init__(self, wrapper: ActorWrapper) -> None:
        self.before = self.resident_shmem()
        self.model = wrapper.load()

    @staticmethod
    def resident_shmem() -> int:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("RssShmem:"))
        return int(line.split()[1]) * 1024

    def growth(self) -> int:
        return self.resident_shmem() - self.before

    def call(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


@pytest.mark.skipif(not populate_read_supported(), reason="prefault needs madvise(MADV_POPULATE_READ): Linux 5.14+")
def test_prefault_maps_the_weights_in_before_the_first_forward() -> None:
    layers = [nn.Linear(1024, 1024, bias=False) for _ in range(16)]  # 64 MiB
    model = nn.Sequential(*layers).eval()
    weights = 64 * MIB
    prefaulted = ResidentShmem.remote(ActorWrapper(model, prefault=True))
    lazy = ResidentShmem.remote(ActorWrapper(model))
    # Prefaulting runs in the background after load(): poll what the process has mapped in.
    assert wait_until(lambda: ray.get(prefaulted.growth.remote()) >= weights, timeout=120)
    assert ray.get(lazy.growth.remote()) < weights // 4  # without prefault, pages fault in on use
    x = torch.randn(2, 1024)
    assert torch.equal(ray.get(prefaulted.call.remote(x)), model(x))
