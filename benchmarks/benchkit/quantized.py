"""A torchao int8 weight-only model in N actors: shared zero-copy, quantized per actor, or ``torch.load``'ed.

The model is a stack of square float32 ``nn.Linear`` layers (1 GiB by default), quantized
with torchao's ``Int8WeightOnlyConfig`` (a quarter of the bytes, plus per-row scales).
Three ways to give it to N actors, measured the same way:

* ``zerocopy``: the driver quantizes once and wraps the quantized model
  (``ActorWrapper``); each actor calls ``wrapper.load()``; the inner int8 tensors map
  the object store.
* ``quantize_per_actor``: what users do today: each actor loads the float checkpoint
  (``torch.load(mmap=True)``, ``assign=True``: the float weights are the file's pages,
  not a private copy) and quantizes its own model; the int8 weights are private.
* ``torch_load``: the driver saves the quantized state dict once (``torch.save``); each
  actor builds the module on ``meta`` and ``load_state_dict(torch.load(path), assign=True)``
  reads its own private copy.

Every actor is started and has got a small quantized model (256 x 256) the method's own
way and run it before the clock starts (imports, kernels and first-use costs paid, as in
a serving actor); all of them then load at the same moment and
time their own load and first forward; then each runs one more forward, one actor at a
time (the forward's compute alone, for the same model in every method). Node memory is the object store's growth plus
every actor's private growth (``Pss - Pss_Shmem``, heap trimmed) across load and first
forward, over the quantized bytes.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import ray
import torch
from torch import nn

from benchkit.memory import object_store_bytes_used, private_bytes
from ray_zerocopy_core.process_memory import trim_heap

MIB = 1024**2
SIDE = 4096
METHODS = ("zerocopy", "quantize_per_actor", "torch_load")
LABELS = {
    "zerocopy": "ray-zerocopy: quantized once, shared (ActorWrapper)",
    "quantize_per_actor": "each actor quantizes its own copy (float torch.load(mmap=True) + quantize_)",
    "torch_load": "torch.load of the quantized state dict per actor",
}


class Stack(nn.Module):
    """``layers`` float32 ``Linear(side, side)`` layers without bias (64 MiB each at 4096)."""

    def __init__(self, layers: int, side: int = SIDE) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(side, side, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def layers_for(size_mib: int, side: int = SIDE) -> int:
    """How many layers make about ``size_mib`` MiB of float32 weights."""
    return max(1, round(size_mib * MIB / (side * side * 4)))


def float_model(layers: int, seed: int = 0, side: int = SIDE) -> Stack:
    """The float model, filled with small random weights (cheaply: no default init)."""
    with torch.device("meta"):
        model = Stack(layers, side)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0, 0.02, generator=generator)
    return model.eval()


def quantize(model: nn.Module) -> nn.Module:
    """torchao int8 weight-only, in place; returns ``model``."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    quantize_(model, Int8WeightOnlyConfig())
    return model


def quantized_bytes(model: nn.Module) -> int:
    """The bytes of the quantized model's inner tensors (what one shared copy costs)."""
    from ray_zerocopy_core.plugin import flatten_subclass, is_flattenable

    total = 0
    for tensor in model.state_dict().values():
        parts = flatten_subclass(tensor)[0].values() if is_flattenable(tensor) else [tensor]
        total += sum(part.nbytes for part in parts)
    return total


def make_input(side: int = SIDE) -> torch.Tensor:
    return torch.randn(8, side, generator=torch.Generator().manual_seed(1))


#: Side of the small model each actor loads, the method's own way, before the clock starts.
WARM_UP_SIDE = 256


def get_model(method: str, handle: Any, layers: int, side: int = SIDE) -> nn.Module:
    """The worker step of ``method``: the quantized model from ``handle`` (see the module doc)."""
    if method == "zerocopy":
        return handle.load()  # type: ignore[no-any-return]
    with torch.device("meta"):
        model = Stack(layers, side)
    if method == "quantize_per_actor":
        model.load_state_dict(torch.load(handle, mmap=True, weights_only=True), assign=True)
        return quantize(model.eval())
    model.load_state_dict(torch.load(handle, weights_only=True), assign=True)
    return model.eval()


def prepare(method: str, model: nn.Module, layers: int, path: Path, side: int = SIDE) -> tuple[Any, float]:
    """The driver step of ``method`` for the quantized ``model``: the handle actors get, and its seconds."""
    from ray_zerocopy import ActorWrapper

    start = time.perf_counter()
    if method == "zerocopy":
        return ActorWrapper(model), time.perf_counter() - start
    if method == "quantize_per_actor":  # the float checkpoint each actor quantizes
        torch.save(float_model(layers, side=side).state_dict(), path)
    else:
        torch.save(model.state_dict(), path)
    path.read_bytes()  # in the page cache, as a checkpoint read once before would be
    return str(path), time.perf_counter() - start


@ray.remote(num_cpus=0.5)
class QuantizedWorker:
    """One actor: warmed up at start (a small model got ``method``'s way), then asked once for the model."""

    def __init__(self, method: str, warm_up: Any) -> None:
        import torchao.quantization  # noqa: F401  (serving code imports it; it registers torch.load's safe globals)

        with torch.no_grad():  # imports, kernels and first-use costs paid, as in a serving actor
            get_model(method, warm_up, 1, WARM_UP_SIDE)(make_input(WARM_UP_SIDE))
        self.model: Any = None
        trim_heap()
        self.before = private_bytes()

    def ready(self) -> int:
        return os.getpid()

    def run(self, method: str, handle: Any, layers: int, start_at: float) -> dict[str, float]:
        """Wait for ``start_at`` (wall clock), get the model as ``method`` says, run it once; the timings."""
        time.sleep(max(0.0, start_at - time.time()))
        start = time.perf_counter()
        model = get_model(method, handle, layers)
        loaded = time.perf_counter()
        with torch.no_grad():
            model(make_input())
        forward = time.perf_counter()
        self.model = model
        trim_heap()
        return {"load_s": loaded - start, "load_forward_s": forward - start, "growth": private_bytes() - self.before}

    def forward_again(self) -> float:
        """Seconds of one more forward, the model in place (the compute alone, once no other actor runs)."""
        start = time.perf_counter()
        with torch.no_grad():
            self.model(make_input())
        return time.perf_counter() - start


def measure(method: str, layers: int, actors: int, workdir: Path, progress: Any = print) -> dict[str, Any]:
    """One method: ``actors`` fresh actors get the model at once; times, memory and the node's total."""
    small = quantize(float_model(1, seed=9, side=WARM_UP_SIDE))
    warm_up, _ = prepare(method, small, 1, workdir / "warm-up.pt", WARM_UP_SIDE)
    workers = [QuantizedWorker.remote(method, warm_up) for _ in range(actors)]
    ray.get([w.ready.remote() for w in workers])
    store_before = object_store_bytes_used()
    model = quantize(float_model(layers))
    nbytes = quantized_bytes(model)
    handle, prepare_s = prepare(method, model, layers, workdir / "model.pt")
    del model
    trim_heap()
    progress(f"  {method}: {actors} actors load at once")
    start_at = time.time() + 1.0
    points = ray.get([w.run.remote(method, handle, layers, start_at) for w in workers])
    store_growth = object_store_bytes_used() - store_before
    growth = sum(p["growth"] for p in points)
    warm = [ray.get(w.forward_again.remote()) for w in workers]  # one actor at a time
    for worker in workers:
        ray.kill(worker)
    if method == "zerocopy":
        handle.release()
        warm_up.release()
    for name in ("model.pt", "warm-up.pt"):
        (workdir / name).unlink(missing_ok=True)
    node = store_growth + growth
    return {
        "method": method,
        "actors": actors,
        "quantized_bytes": nbytes,
        "prepare_s": prepare_s,
        "load_s": [p["load_s"] for p in points],
        "load_forward_s": [p["load_forward_s"] for p in points],
        "load_forward_median_s": statistics.median(p["load_forward_s"] for p in points),
        "warm_forward_s": warm,
        "store_growth_bytes": store_growth,
        "private_growth_bytes": growth,
        "node_bytes": node,
        "node_ratio": node / nbytes,
    }
