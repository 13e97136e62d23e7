"""Measuring one method: N actors load a model at once; time, memory and outputs.

:func:`measure_load` is the one measurement every method goes through. Actors are
started and warmed first (torch imported, kernels initialized on a tiny model), then
all of them are asked to load at the same moment; each times its own load and first
forward. Memory is counted as :mod:`benchkit.memory` describes, once after every actor has
loaded (``extra_bytes_loaded``) and once more after every first forward (``extra_bytes``:
a forward can add private memory, e.g. bfloat16 kernels' workspaces, whatever the method).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import io
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from benchkit.memory import (
    PeakSampler,
    benchmark_shm_bytes,
    meminfo_shmem,
    object_store_bytes_used,
    private_bytes,
    shared_fraction,
    wait_for_quiet,
)
from benchkit.methods import METHODS, Method
from benchkit.models import (
    ModelSpec,
    TransformerLike,
    blank_model,
    export,
    make_input,
    spec_from_dict,
    trace,
    weight_bytes,
)
from ray_zerocopy_core.process_memory import trim_heap

BENCHMARKS_DIR = Path(__file__).resolve().parent.parent


@dataclass
class LoadPoint:
    """The result of one method, one model, N actors."""

    method: str
    spec: dict[str, Any]
    actors: int
    weight_bytes: int
    prepare_s: float
    prepare_peak_rss: int
    prepare_peak_private: int
    load_s: list[float]
    load_forward_s: list[float]
    extra_bytes: int
    extra_bytes_loaded: int
    private_growth: dict[str, int]
    shm_files_growth: int
    shmem_growth: int
    store_growth: int
    shared_fraction: list[float]
    outputs_equal: bool
    max_abs_diff: float
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def memory_ratio(self) -> float:
        """Extra physical memory over the weight bytes."""
        return self.extra_bytes / self.weight_bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return asdict(self)


@ray.remote(num_cpus=0)
class LoadProbe:
    """An actor that loads one model with a given method and reports what it cost."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec_from_dict(spec)
        self.model: Any = None
        warm_up(self.spec)

    def ready(self) -> int:
        """This worker's pid, once it is warmed up."""
        return os.getpid()

    def baseline(self) -> int:
        """Private bytes right before loading (heap trimmed)."""
        trim_heap()
        return private_bytes()

    def load(self, method: str, handle: Any) -> tuple[float, float]:
        """Load with ``method``; seconds taken and the fraction of weights in shared memory."""
        start = time.perf_counter()
        self.model = METHODS[method].load(handle, self.spec)
        elapsed = time.perf_counter() - start
        trim_heap()
        return elapsed, shared_fraction(self.model)

    def forward(self) -> tuple[float, torch.Tensor]:
        """The first forward of the loaded model: seconds taken and its output."""
        start = time.perf_counter()
        with torch.no_grad():
            output = self.model(make_input())
        elapsed = time.perf_counter() - start
        trim_heap()
        return elapsed, output


def warm_up(spec: ModelSpec) -> None:
    """Pay one-time costs of a fresh worker before any timer starts: kernels, meta-device
    model construction, the torch.load unpickler, library imports."""
    tiny = TransformerLike(16, tied=spec.tied).to(spec.torch_dtype).eval()
    with torch.no_grad():
        if spec.scripted:
            tiny = trace(tiny)
            tiny(make_input())
        tiny(make_input())
    if spec.exported:  # the torch.export (de)serializer's imports and first-use costs
        exported = io.BytesIO()
        torch.export.save(export(TransformerLike(16).eval()), exported)
        exported.seek(0)
        with torch.no_grad():
            torch.export.load(exported).module()(make_input())
    blank_model(ModelSpec(1, spec.dtype, spec.tied)).to_empty(device="cpu")
    buffer = io.BytesIO()
    torch.save(tiny.state_dict(), buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)
    for module in ("ray_zerocopy_core", "ray_zerocopy_jit", "ray_zerocopy_export", "safetensors.torch"):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)


def reference_output(model: Any) -> torch.Tensor:
    """The model's output on the fixed input, computed with one thread like the actors."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            if isinstance(model, torch.export.ExportedProgram):
                return model.module()(make_input())
            return model(make_input())
    finally:
        torch.set_num_threads(threads)


def measure_load(
    method: Method, spec: ModelSpec, model: torch.nn.Module, n_actors: int, workdir: Path, expected: torch.Tensor
) -> LoadPoint:
    """Run ``method`` for ``model`` with ``n_actors`` actors loading at once (see module doc).

    With ``n_actors=0`` only the driver step is measured (time, peak memory, bytes written).
    """
    actors = [LoadProbe.remote(spec.to_dict()) for _ in range(n_actors)]
    pids = ray.get([actor.ready.remote() for actor in actors])
    wait_for_quiet()
    trim_heap()
    files0, shmem0, store0, driver0 = benchmark_shm_bytes(), meminfo_shmem(), object_store_bytes_used(), private_bytes()
    handle = None
    try:
        with PeakSampler() as sampler:
            start = time.perf_counter()
            handle = method.prepare(model, spec, workdir)
            prepare_s = time.perf_counter() - start
        ready = list(zip(pids, ray.get([actor.baseline.remote() for actor in actors])))
        loads = ray.get([actor.load.remote(method.name, handle) for actor in actors])
        trim_heap()
        loaded_bytes = sum(private_bytes(pid) - before for pid, before in ready) + private_bytes() - driver0
        loaded_bytes += benchmark_shm_bytes() - files0 + object_store_bytes_used() - store0
        forwards = ray.get([actor.forward.remote() for actor in actors])
        trim_heap()
        actor_growth = {str(pid): private_bytes(pid) - before for pid, before in ready}
        driver_growth = private_bytes() - driver0
        files_growth, store_growth = benchmark_shm_bytes() - files0, object_store_bytes_used() - store0
        shmem_growth = meminfo_shmem() - shmem0
        outputs = [output for _, output in forwards]
        diffs = [float((output.float() - expected.float()).abs().max()) for output in outputs]
        return LoadPoint(
            method=method.name,
            spec=spec.to_dict(),
            actors=n_actors,
            weight_bytes=weight_bytes(model),
            prepare_s=prepare_s,
            prepare_peak_rss=sampler.peak_rss,
            prepare_peak_private=sampler.peak_private,
            load_s=[load_s for load_s, _ in loads],
            load_forward_s=[load_s + forward_s for (load_s, _), (forward_s, _) in zip(loads, forwards)],
            extra_bytes=sum(actor_growth.values()) + driver_growth + files_growth + store_growth,
            extra_bytes_loaded=loaded_bytes,
            private_growth={"driver": driver_growth, **actor_growth},
            shm_files_growth=files_growth,
            shmem_growth=shmem_growth,
            store_growth=store_growth,
            shared_fraction=[fraction for _, fraction in loads],
            outputs_equal=all(torch.equal(output, expected) for output in outputs),
            max_abs_diff=max(diffs, default=0.0),
        )
    finally:
        for actor in actors:
            ray.kill(actor)
        if handle is not None:
            method.cleanup(handle)
        del handle
        gc.collect()


def failed_point(method: Method, spec: ModelSpec, n_actors: int, error: str) -> LoadPoint:
    """A placeholder result for a method that could not run."""
    return LoadPoint(
        method.name, spec.to_dict(), n_actors, 0, 0.0, 0, 0, [], [], 0, 0, {}, 0, 0, 0, [], False, 0.0, error
    )


def measure_in_subprocess(
    method: Method, spec: ModelSpec, model: torch.nn.Module, n_actors: int, workdir: Path
) -> LoadPoint:
    """Run :func:`measure_load` in a second driver whose environment has ``method.env``.

    Needed for settings Ray reads when it is imported (``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS``):
    the subprocess sets them before ``import ray``, connects to this cluster, loads the
    same weights (handed over as a state dict in /dev/shm, deleted before it measures) and
    reports its point as JSON.
    """
    handoff = Path("/dev/shm") / f"ray_zerocopy_handoff_{os.getpid()}.pt"
    torch.save(model.state_dict(), handoff)
    env = dict(os.environ, **dict(method.env))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS_DIR), env.get("PYTHONPATH")]))
    request = {
        "address": ray.get_runtime_context().gcs_address,
        "method": method.name,
        "spec": spec.to_dict(),
        "actors": n_actors,
        "workdir": str(workdir),
        "handoff": str(handoff),
    }
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "benchkit.subdriver", json.dumps(request)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        handoff.unlink(missing_ok=True)
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return LoadPoint(**json.loads(line[len("RESULT ") :]))
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
    return failed_point(method, spec, n_actors, "subprocess failed: " + " | ".join(tail))
