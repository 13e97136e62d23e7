"""A pipeline of several models: every model is shared, the rest of the pipeline is copied.

``Pipeline`` holds two models (an encoder and a classifier head) next to ordinary
attributes (a label list and a temperature). The wrapper finds the model attributes by
itself, stores one Ray object per model, and sends the pipeline without its models
(the *skeleton*) to workers. The same wrapper type serves actors; the script then wraps
the same pipeline for tasks to show both modes, and ``model_attr_names`` to share only
some attributes.

Run: ``python examples/multi_model_pipeline.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn

from ray_zerocopy import ActorWrapper, TaskWrapper


class Pipeline:
    def __init__(self) -> None:
        self.encoder = nn.Sequential(nn.Linear(20, 32), nn.ReLU()).eval()
        self.head = nn.Linear(32, 3).eval()
        self.labels = ["cat", "dog", "bird"]
        self.temperature = 0.5

    def __call__(self, x: torch.Tensor) -> list[str]:
        with torch.no_grad():
            probs = (self.head(self.encoder(x)) / self.temperature).softmax(dim=-1)
        return [self.labels[i] for i in probs.argmax(dim=-1).tolist()]


@ray.remote(num_cpus=0.5)
class PipelineActor:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.pipeline = wrapper.load()  # both models rebuilt zero-copy, labels copied

    def run(self, x: torch.Tensor) -> list[str]:
        return self.pipeline(x)


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    pipeline = Pipeline()
    x = torch.randn(6, 20)
    expected = pipeline(x)

    wrapper = ActorWrapper(pipeline)
    print(f"shared models: {wrapper.model_names}, {wrapper.nbytes} bytes in the object store")
    actors = [PipelineActor.remote(wrapper) for _ in range(2)]
    for labels in ray.get([a.run.remote(x) for a in actors]):
        assert labels == expected
    print(f"actor mode: {expected}")

    task_pipeline = TaskWrapper(pipeline)
    assert task_pipeline(x) == expected
    print("task mode: same labels, each model call ran as a Ray task")

    only_head = ActorWrapper(pipeline, model_attr_names=["head"])
    print(f"model_attr_names=['head'] shares only {only_head.model_names}; the encoder travels with the skeleton")

    ray.shutdown()


if __name__ == "__main__":
    main()
