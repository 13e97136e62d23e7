"""Quickstart: two Ray actors run one small model from a single shared copy of its weights.

The driver wraps the model once (its weights go into Ray's object store), passes the
small wrapper to each actor, and every actor calls ``wrapper.load()`` to get a ready
model whose tensors map the shared memory instead of copying it.

Run: ``python examples/quickstart.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn

from ray_zerocopy import ActorWrapper


@ray.remote
class Predictor:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()  # zero-copy: read-only views of the object store

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 4)).eval()
    wrapper = ActorWrapper(model)
    print(f"wrapped {wrapper.nbytes} bytes of weights: {wrapper!r}")

    actors = [Predictor.options(num_cpus=0.5).remote(wrapper) for _ in range(2)]
    x = torch.randn(3, 64)
    outputs = ray.get([actor.predict.remote(x) for actor in actors])

    with torch.no_grad():
        expected = model(x)
    for out in outputs:
        assert torch.allclose(out, expected), "an actor computed something different"
    print(f"{len(actors)} actors answered the same as the local model, shape {tuple(outputs[0].shape)}")

    ray.shutdown()


if __name__ == "__main__":
    main()
