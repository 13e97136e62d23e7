"""Plain Ray actors: several ``@ray.remote`` actors share one copy of a model.

Each actor loads the model in ``__init__`` and keeps it for its whole life. The script
checks that every actor answers like the local model, prints what a loaded model looks
like (eval mode, parameters frozen), and releases the stored weights at the end.

Run: ``python examples/plain_actors.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn

from ray_zerocopy import ActorWrapper


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).softmax(dim=-1)


@ray.remote(num_cpus=0.5)
class Worker:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def describe(self) -> dict[str, object]:
        weight = self.model.body[0].weight
        return {
            "training": self.model.training,
            "requires_grad": weight.requires_grad,
            "is_parameter": isinstance(weight, nn.Parameter),
        }


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    model = TinyNet().eval()
    wrapper = ActorWrapper(model)
    workers = [Worker.remote(wrapper) for _ in range(3)]

    x = torch.randn(4, 32)
    outputs = ray.get([w.predict.remote(x) for w in workers])
    with torch.no_grad():
        expected = model(x)
    assert all(torch.allclose(out, expected) for out in outputs)
    print(f"{len(workers)} actors agree with the local model")
    print("each actor's model:", ray.get(workers[0].describe.remote()))

    for w in workers:
        ray.kill(w)
    wrapper.release()  # drop the driver's reference; Ray frees the weights when unused
    ray.shutdown()


if __name__ == "__main__":
    main()
