"""Ray Serve with a named model: the deploy script exits, replicas load the model by name.

``publish(name, loader)`` stores the model once, owned by a detached holder actor, so
the weights outlive the script that deployed the application. Each replica calls
``load_published(name)`` in its constructor: zero-copy, read-only, milliseconds. A
replica that Serve starts later (scale-up, or replacing one that died) loads the same
way, long after the deploy script is gone.

The demo (no arguments) plays the three roles on a private local Ray:

1. ``deploy``: a separate driver process publishes the model, deploys the application
   and exits;
2. ``query``: a second driver process reaches the application by name, checks the
   answers, kills one replica and waits for Serve's replacement, which loads by name;
3. this process then shuts Serve down and unpublishes the model.

Against a running cluster, run the steps yourself:
``python examples/serve_named_models.py deploy --address auto``, then ``query``, then
``teardown``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import ray
import torch
from ray import serve
from torch import nn

from ray_zerocopy import aliases_object_store, load_published, publish, unpublish

APP = "named-classifier"
MODEL_NAME = "examples/classifier"
FEATURES = [0.1 * i for i in range(16)]


def build_model() -> nn.Module:
    """The model to serve (a real service would read a checkpoint here)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4)).eval()


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.25})
class Classifier:
    """A replica: loads the published model by name when it starts."""

    def __init__(self, model_name: str) -> None:
        start = time.perf_counter()
        self.model = load_published(model_name)
        self.load_ms = (time.perf_counter() - start) * 1000
        self.aliased = all(aliases_object_store(p) for p in self.model.parameters())

    def __call__(self, features: list[float]) -> int:
        with torch.no_grad():
            return int(self.model(torch.tensor([features])).argmax())

    def info(self) -> dict[str, object]:
        return {"pid": os.getpid(), "load_ms": self.load_ms, "aliased": self.aliased}


def deploy(address: str) -> None:
    """Publish the model (built inside its holder actor), deploy, and exit."""
    ray.init(address=address, logging_level="ERROR")
    print("published", publish(MODEL_NAME, build_model))
    serve.start(proxy_location="Disabled")
    serve.run(Classifier.bind(MODEL_NAME), name=APP, route_prefix=None, logging_config={"enable_access_log": False})
    print(f"deployed {APP!r}; the deploy script exits now")
    ray.shutdown()


def replica_infos(handle: serve.handle.DeploymentHandle, calls: int = 8) -> dict[int, dict[str, object]]:
    """``info()`` of the replicas that answer ``calls`` concurrent requests, by pid."""
    infos = [r.result(timeout_s=60) for r in [handle.info.remote() for _ in range(calls)]]
    return {int(str(i["pid"])): i for i in infos}


def query(address: str) -> None:
    """A second driver: reach the application, then make Serve start a new replica."""
    ray.init(address=address, logging_level="ERROR")
    handle = serve.get_app_handle(APP)
    with torch.no_grad():
        expected = int(build_model()(torch.tensor([FEATURES])).argmax())
    answers = [r.result(timeout_s=60) for r in [handle.remote(FEATURES) for _ in range(8)]]
    assert answers == [expected] * 8, answers
    print(f"8 requests answered label {expected} after the deploy script exited")

    before = replica_infos(handle)
    replicas = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::") and APP in a["name"]
    ]
    ray.kill(ray.get_actor(replicas[0], namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    new: dict[str, object] | None = None
    while new is None and time.monotonic() < deadline:
        with contextlib.suppress(Exception):  # a request routed to the killed replica: try again
            new = next((i for pid, i in replica_infos(handle).items() if pid not in before), None)
        time.sleep(0.5)
    assert new is not None, "Serve did not start a replacement replica in time"
    assert new["aliased"], "the new replica's weights should map the object store"
    assert handle.remote(FEATURES).result(timeout_s=60) == expected
    print(f"a replica started after the deploy script exited loaded the model by name in {new['load_ms']:.1f} ms")
    ray.shutdown()


def teardown(address: str) -> None:
    """Delete the application and free the model."""
    ray.init(address=address, logging_level="ERROR")
    serve.delete(APP)
    unpublish(MODEL_NAME, missing_ok=True)
    ray.shutdown()


def run_step(step: str, address: str) -> None:
    """Run one step as its own driver process, as a separate script would."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    subprocess.run([sys.executable, __file__, step, "--address", address], env=env, check=True, timeout=600)


def demo() -> None:
    """All steps on a private local Ray that lives as long as this process."""
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    address = ray.get_runtime_context().gcs_address
    try:
        run_step("deploy", address)
        run_step("query", address)
    finally:
        serve.shutdown()
        unpublish(MODEL_NAME, missing_ok=True)
        ray.shutdown()
    print("named-model demo done: the deploy script had exited; replicas loaded by name")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", nargs="?", choices=["demo", "deploy", "query", "teardown"], default="demo")
    parser.add_argument("--address", default="auto", help="Ray cluster address for deploy/query/teardown")
    args = parser.parse_args()
    if args.step == "demo":
        demo()
    else:
        {"deploy": deploy, "query": query, "teardown": teardown}[args.step](args.address)


if __name__ == "__main__":
    main()
