"""Ray Serve model multiplexing over named models: each replica switches among six.

Six models are published by name, each stored once on the node. A deployment with
``@serve.multiplexed`` keeps at most three of them loaded per replica (one replica
here, so it cycles through all six and evicts as it goes); a request names
its model (``multiplexed_model_id``), and a replica that does not have it loaded calls
``load_published(model_id)``: a zero-copy load of milliseconds instead of reading a
checkpoint from disk. Evicting a model only drops that replica's mapping; the stored
copy stays for the next switch.

Run: ``python examples/serve_multiplexed.py``
"""

from __future__ import annotations

import os
import statistics
import time

import ray
import torch
from ray import serve
from torch import nn

from ray_zerocopy import aliases_object_store, load_published, publish, unpublish

MODEL_IDS = [f"examples/multiplexed-{i}" for i in range(6)]
FEATURES = [0.05 * i for i in range(32)]


class ModelBuilder:
    """Builds model ``seed`` (a real service would read that model's checkpoint)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __call__(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 10)).eval()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.25})
class MultiModel:
    """Answers with whichever published model the request names."""

    def __init__(self) -> None:
        self.switch_ms: list[float] = []

    @serve.multiplexed(max_num_models_per_replica=3)
    async def get_model(self, model_id: str) -> nn.Module:
        start = time.perf_counter()
        model = load_published(model_id)
        self.switch_ms.append((time.perf_counter() - start) * 1000)
        assert all(aliases_object_store(p) for p in model.parameters())
        return model

    async def __call__(self, features: list[float]) -> dict[str, object]:
        model_id = serve.get_multiplexed_model_id()
        model = await self.get_model(model_id)
        with torch.no_grad():
            label = int(model(torch.tensor([features])).argmax())
        return {"model": model_id, "label": label, "pid": os.getpid()}

    def stats(self) -> dict[str, object]:
        return {"pid": os.getpid(), "switch_ms": list(self.switch_ms)}


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        for seed, model_id in enumerate(MODEL_IDS):
            publish(model_id, ModelBuilder(seed))
        expected = {}
        with torch.no_grad():
            for seed, model_id in enumerate(MODEL_IDS):
                expected[model_id] = int(ModelBuilder(seed)()(torch.tensor([FEATURES])).argmax())

        serve.start(proxy_location="Disabled")
        handle = serve.run(
            MultiModel.bind(), name="multiplexed", route_prefix=None, logging_config={"enable_access_log": False}
        )
        answers = []
        for _ in range(3):  # three rounds over six models, three loaded at most: every request switches
            for model_id in MODEL_IDS:
                answers.append(handle.options(multiplexed_model_id=model_id).remote(FEATURES).result(timeout_s=60))
        for answer in answers:
            assert answer["label"] == expected[answer["model"]], answer
        stats = {}
        for _ in range(4):
            info = handle.stats.remote().result(timeout_s=60)
            stats[info["pid"]] = info["switch_ms"]
        switches = [ms for per_replica in stats.values() for ms in per_replica]
        print(
            f"{len(answers)} requests over {len(MODEL_IDS)} published models answered correctly by "
            f"{len(stats)} replica(s); {len(switches)} model switches, median "
            f"{statistics.median(switches):.1f} ms each"
        )
    finally:
        serve.shutdown()
        for model_id in MODEL_IDS:
            unpublish(model_id, missing_ok=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
