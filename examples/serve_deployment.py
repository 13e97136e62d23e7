"""Ray Serve: several replicas of one deployment share one copy of the model.

The driver wraps the model and passes the wrapper to the deployment as a bind
argument; each replica calls ``wrapper.load()`` in its constructor. The driver (a
long-lived process here) owns the stored weights, so it must stay alive while the
replicas load them. The script calls the deployment through its handle (no HTTP
traffic leaves the machine; Serve's proxy listens on 127.0.0.1 only) and shuts Serve
down at the end.

Run: ``python examples/serve_deployment.py``
"""

from __future__ import annotations

import os

import ray
import torch
from ray import serve
from torch import nn

from ray_zerocopy import ActorWrapper


@serve.deployment(num_replicas=2, ray_actor_options={"num_cpus": 0.25})
class Classifier:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()
        self.pid = os.getpid()

    def __call__(self, features: list[float]) -> dict[str, object]:
        with torch.no_grad():
            logits = self.model(torch.tensor([features], dtype=torch.float32))
        return {"label": int(logits.argmax()), "replica_pid": self.pid}


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3)).eval()
    wrapper = ActorWrapper(model)

    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    handle = serve.run(Classifier.bind(wrapper), name="zerocopy-demo", route_prefix=None)

    features = [0.1 * i for i in range(10)]
    with torch.no_grad():
        expected = int(model(torch.tensor([features])).argmax())
    answers = [handle.remote(features).result(timeout_s=60) for _ in range(8)]
    assert all(a["label"] == expected for a in answers)
    pids = sorted({a["replica_pid"] for a in answers})
    print(f"8 requests answered label {expected} by replica process(es) {pids}, all on one copy of the weights")

    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
