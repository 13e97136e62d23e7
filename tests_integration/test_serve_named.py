"""Ray Serve with named models, on a real local Ray: deploy-and-exit, new replicas, multiplexing.

The deploy and query steps are ``examples/serve_named_models.py`` run as separate
driver processes against this module's cluster, as a user would run two scripts. The
multiplexing test deploys from this driver; another deploy script runs small tasks of
its own while Serve starts its replicas (what crashes Ray 2.38-2.45: the Ray floor).
Replicas are small (a quarter CPU each) and few, because the whole suite shares two cores.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import ray
import torch
from ray import serve
from scripts import run_driver, run_driver_code
from torch import nn

from ray_zerocopy import aliases_object_store, list_published, load_published, publish, unpublish

pytestmark = pytest.mark.usefixtures("ray_local")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "serve_named_models.py"
STEP_TIMEOUT_S = 300


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("serve_named_models_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def serve_teardown(ray_local: None) -> Iterator[None]:
    """Serve without an HTTP proxy for this module; shut down before ``ray_local`` stops Ray."""
    serve.start(proxy_location="Disabled")
    yield
    serve.shutdown()


def run_step(step: str) -> str:
    """Run one step of the example as its own driver process; return its output."""
    address = ray.get_runtime_context().gcs_address
    return run_driver(EXAMPLE, step, "--address", address, timeout=STEP_TIMEOUT_S, label=f"step {step}")


def test_deploy_script_exits_and_later_replicas_load_by_name(serve_teardown: None) -> None:
    example = load_example()
    try:
        run_step("deploy")  # publishes, deploys, exits
        assert example.MODEL_NAME in [m.name for m in list_published()]

        output = run_step("query")  # a second script: requests, then kills a replica
        assert "8 requests answered" in output
        assert "a replica started after the deploy script exited loaded the model by name" in output

        handle = serve.get_app_handle(example.APP)
        infos = {}
        deadline = time.monotonic() + 60
        while len(infos) < 2 and time.monotonic() < deadline:
            for ref in [handle.info.remote() for _ in range(4)]:
                info = ref.result(timeout_s=60)
                infos[info["pid"]] = info
        assert len(infos) == 2 and all(info["aliased"] for info in infos.values())
        with torch.no_grad():
            expected = int(example.build_model()(torch.tensor([example.FEATURES])).argmax())
        assert handle.remote(example.FEATURES).result(timeout_s=60) == expected
    finally:
        serve.delete(example.APP)
        unpublish(example.MODEL_NAME, missing_ok=True)


MODEL_IDS = [f"test-multiplexed-{i}" for i in range(6)]
FEATURES = [0.1 * i for i in range(8)]


class Builder:
    """Builds model ``seed``: a small MLP."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 16)).eval()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class Multiplexer:
    """Keeps two of the six models loaded; every other request switches."""

    def __init__(self) -> None:
        self.loads: list[tuple[str, bool]] = []

    @serve.multiplexed(max_num_models_per_replica=2)
    async def get_model(self, model_id: str) -> nn.Module:
        model = load_published(model_id)
        self.loads.append((model_id, all(aliases_object_store(p) for p in model.parameters())))
        return model

    async def __call__(self, features: list[float]) -> tuple[str, list[float]]:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        with torch.no_grad():
            return model_id, model(torch.tensor([features]))[0].tolist()

    def loaded(self) -> list[tuple[str, bool]]:
        return list(self.loads)


def test_multiplexing_switches_among_six_published_models(serve_teardown: None) -> None:
    try:
        for seed, model_id in enumerate(MODEL_IDS):
            publish(model_id, Builder(seed))
        handle = serve.run(Multiplexer.bind(), name="multiplexer", route_prefix=None)
        for _ in range(2):
            for seed, model_id in enumerate(MODEL_IDS):
                got_id, output = handle.options(multiplexed_model_id=model_id).remote(FEATURES).result(timeout_s=60)
                with torch.no_grad():
                    expected = Builder(seed)()(torch.tensor([FEATURES]))[0].tolist()
                assert got_id == model_id and output == expected
        loads = handle.loaded.remote().result(timeout_s=60)
        assert {model_id for model_id, _ in loads} == set(MODEL_IDS)
        assert len(loads) == 12  # two models fit: each of the 12 requests had to switch
        assert all(aliased for _, aliased in loads)
    finally:
        serve.delete("multiplexer")
        for model_id in MODEL_IDS:
            unpublish(model_id, missing_ok=True)


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.25})
class ByName:
    """Loads a published model by name in its constructor; answers with its output."""

    def __init__(self, name: str) -> None:
        self.model = load_published(name)
        self.aliased = all(aliases_object_store(p) for p in self.model.parameters())

    def __call__(self, features: list[float]) -> tuple[list[float], bool]:
        with torch.no_grad():
            return self.model(torch.tensor([features]))[0].tolist(), self.aliased


BUSY_DEPLOY_SCRIPT = """
    import threading
    import time

    from ray import serve
    from test_serve_named import Builder, ByName
    from ray_zerocopy import publish

    publish("busy-deployer", Builder(7))

    @ray.remote(num_cpus=0.1)
    def tick() -> int:
        return 0

    stop = threading.Event()

    def keep_busy() -> None:  # this job's own small tasks, running while Serve starts replicas
        while not stop.is_set():
            ray.get(tick.remote())
            time.sleep(0.02)

    thread = threading.Thread(target=keep_busy)
    thread.start()
    try:
        serve.run(ByName.bind("busy-deployer"), name="busy-deployer", route_prefix=None)
    finally:
        stop.set()
        thread.join()
    print("deployed")
"""


def test_deploy_script_running_its_own_tasks_deploys(serve_teardown: None, one_thread: None, tmp_path: Path) -> None:
    """A deploy script that runs tasks of its own while Serve starts the replicas that load its model.

    Ray 2.38-2.45 may give such a replica (a task of Serve's controller, another job) an
    idle worker of the deploy script's job, and the raylet then aborts
    (``worker_pool.cc: Check failed: worker->GetAssignedJobId()...``): the reason for the
    Ray floor of 2.46.0. The tasks keep this job's workers idle often enough to hit it.
    """
    try:
        assert "deployed" in run_driver_code(BUSY_DEPLOY_SCRIPT, tmp_path, "busy_deployer", timeout=STEP_TIMEOUT_S)
        handle = serve.get_app_handle("busy-deployer")
        with torch.no_grad():
            expected = Builder(7)()(torch.tensor([FEATURES]))[0].tolist()
        answers = [ref.result(timeout_s=60) for ref in [handle.remote(FEATURES) for _ in range(6)]]
        assert answers == [(expected, True)] * 6
    finally:
        serve.delete("busy-deployer")
        unpublish("busy-deployer", missing_ok=True)
