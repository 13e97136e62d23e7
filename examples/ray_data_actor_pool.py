"""Batch inference with Ray Data: ``map_batches`` over an actor pool sharing one model.

The wrapper is handed to the pool through ``fn_constructor_kwargs``; each actor of the
pool calls ``wrapper.load()`` once in ``__init__`` and then serves many batches. The
pool's actors all read the same weights in the object store.

Run: ``python examples/ray_data_actor_pool.py``
"""

from __future__ import annotations

import numpy as np
import ray
import torch
from torch import nn

from ray_zerocopy import ActorWrapper


class Classifier:
    """The per-actor callable Ray Data builds once per pool member."""

    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = torch.as_tensor(batch["features"], dtype=torch.float32)
        with torch.no_grad():
            logits = self.model(features)
        return {"id": batch["id"], "label": logits.argmax(dim=1).numpy()}


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    wrapper = ActorWrapper(model)

    rng = np.random.default_rng(0)
    rows = [{"id": i, "features": rng.standard_normal(16).astype(np.float32)} for i in range(200)]
    ds = ray.data.from_items(rows)

    predictions = ds.map_batches(
        Classifier,
        fn_constructor_kwargs={"wrapper": wrapper},
        batch_size=50,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.5,
    )
    result = predictions.to_pandas().sort_values("id")

    with torch.no_grad():
        expected = model(torch.as_tensor(np.stack([r["features"] for r in rows]))).argmax(dim=1).numpy()
    assert (result["label"].to_numpy() == expected).all(), "the pool's labels differ from the local model's"
    print(f"labelled {len(result)} rows with a pool of 2 actors; label counts: {np.bincount(expected).tolist()}")

    ray.shutdown()


if __name__ == "__main__":
    main()
