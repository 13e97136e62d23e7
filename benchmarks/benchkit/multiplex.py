"""Multiplexed model switching: replicas that each keep a few of many models loaded.

Emulates what Ray Serve's ``@serve.multiplexed`` does in each replica, with plain Ray
actors (Serve itself adds a controller, a router and a proxy, too heavy to measure
beside on two cores): a replica keeps at most ``cache_size`` models (least recently
used evicted) and, on a request for a model it does not hold, *switches*: loads it,
then serves the request (the first forward, where a mapped model pays its page faults).

Three ways to switch are compared, measured the same way:

* ``named``: ``load_published(model_id)`` of a model published once by name
  (``ray_zerocopy.publish``); the weights stay in the object store, one copy per node.
* ``torch_load``: what replicas do without sharing: allocate the model and
  ``load_state_dict(torch.load(path))`` from a checkpoint file; each replica holds a
  private copy of each model it keeps.
* ``torch_load_mmap``: the strongest plain-PyTorch switch: ``torch.load(path, mmap=True)``
  and ``load_state_dict(..., assign=True)`` into a model built on the meta device; the
  weights are the file's pages in the page cache, shared by the replicas mapping them.

The checkpoint files are read once before timing, so the page cache is warm: the best
case for both ``torch.load`` methods.

Node memory is the growth of the object store plus the growth of every replica's
``Pss - Pss_Shmem`` (mapped file pages included, split between the processes mapping
them), from before the first publish/switch to after the last switch, plus, for
``named``, the whole private memory of the holder actor (a process that exists only
for sharing). Every method divides by the same weight bytes: those of the models built
from the spec.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import ray
import torch

from benchkit.memory import object_store_bytes_used, private_bytes
from benchkit.methods import METHODS
from benchkit.models import ModelSpec, build_model, make_input, spec_weight_bytes
from ray_zerocopy_core.process_memory import trim_heap


class SeededModel:
    """Loader of one benchmark model: built where it is called (inside a holder actor)."""

    def __init__(self, size_mib: int, seed: int) -> None:
        self.size_mib = size_mib
        self.seed = seed

    def __call__(self) -> torch.nn.Module:
        return build_model(ModelSpec(self.size_mib), seed=self.seed)


@ray.remote(num_cpus=0)
class Replica:
    """One emulated replica: an LRU of loaded models and a timed switch."""

    def __init__(self, method: str, size_mib: int, cache_size: int, files: dict[str, str]) -> None:
        self.method = method
        self.spec = ModelSpec(size_mib)
        self.cache_size = cache_size
        self.files = files
        self.models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        with torch.no_grad():  # warm up kernels on a tiny model, as a started replica would be
            build_model(ModelSpec(1))(make_input())

    def private_memory(self) -> int:
        trim_heap()
        return private_bytes()

    def switch(self, model_id: str) -> tuple[float, float]:
        """Load ``model_id`` (not loaded here), run it once; (switch, first forward) seconds."""
        assert model_id not in self.models
        start = time.perf_counter()
        if self.method == "named":
            from ray_zerocopy import load_published

            model = load_published(model_id)
        else:  # the benchmark suite's worker step of the same name
            model = METHODS[self.method].load(self.files[model_id], self.spec)
        loaded = time.perf_counter()
        with torch.no_grad():
            model(make_input())
        forward = time.perf_counter()
        self.models[model_id] = model
        while len(self.models) > self.cache_size:
            self.models.popitem(last=False)
        del model
        trim_heap()
        return loaded - start, forward - loaded


def publish_models(model_ids: list[str], size_mib: int) -> None:
    """Publish each model by name; each is built inside its own holder actor."""
    from ray_zerocopy import publish

    for seed, model_id in enumerate(model_ids):
        publish(model_id, SeededModel(size_mib, seed))


def save_models(model_ids: list[str], size_mib: int, workdir: Path) -> dict[str, str]:
    """Write each model's state dict to a file; read it once (warm page cache)."""
    files = {}
    for seed, model_id in enumerate(model_ids):
        path = workdir / f"{model_id}.pt"
        torch.save(build_model(ModelSpec(size_mib), seed=seed).state_dict(), path)
        path.read_bytes()
        files[model_id] = str(path)
    trim_heap()
    return files


def measure(
    method: str,
    n_models: int,
    size_mib: int,
    n_replicas: int,
    cache_size: int,
    rounds: int,
    workdir: Path,
    progress: Any = print,
) -> dict[str, Any]:
    """Run one method: ``rounds`` passes of requests over every model, round-robin over replicas.

    Every request goes to a replica that does not hold the model (the model order
    rotates per replica and ``cache_size < n_models``), so every request is a switch.
    """
    from ray_zerocopy import unpublish
    from ray_zerocopy_core.named import holder_private_memory

    model_ids = [f"bench-multiplex-{i}" for i in range(n_models)]
    assert cache_size < n_models
    files: dict[str, str] = {}
    if method != "named":
        progress(f"  saving {n_models} state dicts of {size_mib} MiB")
        files = save_models(model_ids, size_mib, workdir)
    replicas = [Replica.remote(method, size_mib, cache_size, files) for _ in range(n_replicas)]
    replica_base = ray.get([r.private_memory.remote() for r in replicas])
    store_base = object_store_bytes_used()
    if method == "named":
        progress(
            f"  publishing {n_models} models of {size_mib} MiB (built by their loaders, owned by one holder actor)"
        )
        publish_models(model_ids, size_mib)
    switch_s: list[float] = []
    forward_s: list[float] = []
    request_s: list[float] = []
    for round_index in range(rounds):
        for i, replica in enumerate(replicas):
            order = model_ids[i % n_models :] + model_ids[: i % n_models]
            for model_id in order:
                load, forward = ray.get(replica.switch.remote(model_id))
                switch_s.append(load)
                forward_s.append(forward)
                request_s.append(load + forward)
        progress(
            f"  round {round_index + 1}: median switch + first forward {statistics.median(request_s) * 1e3:.1f} ms, "
            f"switch alone {statistics.median(switch_s) * 1e3:.1f} ms so far"
        )
    after = ray.get([r.private_memory.remote() for r in replicas])
    # Conservative: a replica whose private memory shrank (its start-up heap trimmed) counts 0, not less.
    replica_growth = sum(max(0, end - start) for start, end in zip(replica_base, after))
    store_growth = object_store_bytes_used() - store_base
    holders = 0
    weights = n_models * spec_weight_bytes(ModelSpec(size_mib))
    if method == "named":
        holders = holder_private_memory()  # the one default holder owns all the models
    for replica in replicas:
        ray.kill(replica)
    if method == "named":
        for model_id in model_ids:
            unpublish(model_id, missing_ok=True)
    for path in files.values():
        Path(path).unlink(missing_ok=True)
    node = store_growth + replica_growth + holders
    return {
        "method": method,
        "models": n_models,
        "size_mib": size_mib,
        "replicas": n_replicas,
        "cache_size": cache_size,
        "switches": len(switch_s),
        "request_median_s": statistics.median(request_s),
        "request_p90_s": sorted(request_s)[int(0.9 * (len(request_s) - 1))],
        "switch_median_s": statistics.median(switch_s),
        "forward_median_s": statistics.median(forward_s),
        "weights_bytes": weights,
        "store_growth_bytes": store_growth,
        "replica_growth_bytes": replica_growth,
        "holder_private_bytes": holders,
        "node_bytes": node,
        "node_ratio": node / weights,
    }
