"""TorchScript models in both modes: ``JITTaskWrapper`` and ``JITActorWrapper``.

A traced model (``torch.jit.trace``) is shared by the TorchScript backend of the
``ray-zerocopy[jit]`` extra: the code and structure travel as a weightless TorchScript
archive, and the weights are swapped in as zero-copy views of the object store. The
script runs the same traced model as Ray tasks and in two actors, and checks both
against the local model. Frozen modules (``torch.jit.freeze``) are not supported.

Run: ``python examples/torchscript_task_and_actor.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn

from ray_zerocopy import JITActorWrapper, JITTaskWrapper


@ray.remote(num_cpus=0.5)
class ScriptedPredictor:
    def __init__(self, wrapper: JITActorWrapper) -> None:
        self.model = wrapper.load()  # a torch.jit.ScriptModule over shared weights

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 2)).eval()
    example = torch.randn(1, 12)
    with torch.no_grad():
        scripted = torch.jit.trace(eager, example)

    x = torch.randn(5, 12)
    with torch.no_grad():
        expected = scripted(x)

    # Task mode: the wrapper is called like the model; __call__ and forward run as tasks.
    remote_model = JITTaskWrapper(scripted)
    assert torch.allclose(remote_model(x), expected)
    assert torch.allclose(remote_model.forward(x), expected)
    print("JITTaskWrapper: __call__ and forward ran as Ray tasks")

    # Actor mode: each actor loads the ScriptModule once.
    wrapper = JITActorWrapper(scripted)
    actors = [ScriptedPredictor.remote(wrapper) for _ in range(2)]
    for out in ray.get([a.predict.remote(x) for a in actors]):
        assert torch.allclose(out, expected)
    print(f"JITActorWrapper: {len(actors)} actors agree with the traced model ({wrapper.nbytes} bytes shared)")

    ray.shutdown()


if __name__ == "__main__":
    main()
