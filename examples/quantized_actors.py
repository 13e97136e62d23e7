"""Quantized actors: a torchao int8 model shared by several actors, quantized once.

The driver quantizes a model with torchao (``quantize_`` with ``Int8WeightOnlyConfig``)
and wraps it; each actor loads it and gets torchao's ``Int8Tensor`` weights whose int8
values and scales map the object store: the node holds one copy of the quantized bytes
(a quarter of the float model) whatever the number of actors. The script checks that
each actor answers like the quantized model, and that its inner tensors are shared.

Needs torchao (``pip install torchao``). Run: ``python examples/quantized_actors.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn
from torchao.quantization import Int8WeightOnlyConfig, quantize_

from ray_zerocopy import ActorWrapper


def build() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.Linear(1024, 16)).eval()


@ray.remote(num_cpus=0.5)
class Classifier:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()  # zero-copy: the int8 values and scales map the object store

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def describe(self) -> dict[str, object]:
        from ray_zerocopy import aliases_object_store

        weight = self.model[0].weight
        return {
            "type": type(weight).__name__,
            "qdata": (weight.qdata.dtype, aliases_object_store(weight.qdata)),
            "scale": (weight.scale.dtype, aliases_object_store(weight.scale)),
        }


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    model = build()
    float_bytes = sum(p.nbytes for p in model.parameters())
    quantize_(model, Int8WeightOnlyConfig())  # torchao: Linear weights become Int8Tensor
    wrapper = ActorWrapper(model)
    print(f"float weights {float_bytes / 1024:.0f} KiB, stored quantized {wrapper.nbytes / 1024:.0f} KiB")

    actors = [Classifier.remote(wrapper) for _ in range(3)]
    x = torch.randn(8, 512)
    with torch.no_grad():
        expected = model(x)
    for output in ray.get([a.predict.remote(x) for a in actors]):
        assert torch.allclose(output, expected, atol=1e-5)
    described = ray.get(actors[0].describe.remote())
    assert described["type"] == "Int8Tensor" and described["qdata"][1] and described["scale"][1], described
    print("each actor's first weight:", described)
    print(f"{len(actors)} quantized actors agree with the quantized model")

    for actor in actors:
        ray.kill(actor)
    wrapper.release()
    ray.shutdown()


if __name__ == "__main__":
    main()
