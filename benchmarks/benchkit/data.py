"""A Ray Data ``map_batches`` run with an actor pool, each actor getting the model by a method.

Measures time to the first batch (pool start-up and model load included) and total time
for a fixed dataset.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.methods import METHODS
from benchkit.models import VOCAB, ModelSpec, spec_from_dict


class Predictor:
    """Ray Data callable class: loads the model in ``__init__``, predicts token ids per row."""

    def __init__(self, method: str, handle: Any, spec: dict[str, Any]) -> None:
        self.model = METHODS[method].load(handle, spec_from_dict(spec))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = torch.from_numpy(batch["id"] % VOCAB).reshape(-1, 1)
        with torch.no_grad():
            logits = self.model(ids)
        return {"id": batch["id"], "prediction": logits.argmax(-1).reshape(-1).numpy()}


class _Identity:
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch


def warm_up_data_pipeline() -> None:
    """One tiny actor-pool run first, so the first measured run does not pay Ray Data's start-up."""
    import ray.data

    dataset = ray.data.range(32, override_num_blocks=2).map_batches(
        _Identity, batch_size=16, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5
    )
    for _ in dataset.iter_batches(batch_size=16):
        pass


def measure_data_pipeline(
    method_name: str, spec: ModelSpec, model: torch.nn.Module, workdir: Path, rows: int, batch_size: int, pool: int
) -> dict[str, Any]:
    """Seconds to the first batch and in total, for ``rows`` rows through ``pool`` actors."""
    import ray.data

    method = METHODS[method_name]
    handle = method.prepare(model, spec, workdir)
    try:
        dataset = ray.data.range(rows, override_num_blocks=max(2, rows // batch_size // 2)).map_batches(
            Predictor,
            fn_constructor_kwargs={"method": method_name, "handle": handle, "spec": spec.to_dict()},
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=pool),
            num_cpus=0.5,
        )
        start = time.perf_counter()
        first = None
        count = 0
        for batch in dataset.iter_batches(batch_size=batch_size):
            if first is None:
                first = time.perf_counter() - start
            count += len(batch["prediction"])
        total = time.perf_counter() - start
    finally:
        method.cleanup(handle)
    return {"method": method_name, "first_batch_s": first, "total_s": total, "rows": count, "pool": pool}
