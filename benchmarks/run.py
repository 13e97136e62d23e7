"""The ray-zerocopy benchmark suite (``nox -s bench``).

Compares, in one run and measured the same way, ray-zerocopy's actor mode with what
users would do instead: ``torch.load`` of a saved state dict (read, or mapped with
``mmap=True`` and assigned), ``ray.put(model)``, Ray's
``RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1``, safetensors mmap'ed from /dev/shm, and for
TorchScript ``torch.jit.load`` (and, as a floor, ``torch.jit.load`` of the weightless
archive). Figures: load + first forward and load alone against model size and actor
count, extra memory, the driver step from a fresh start, task-mode latency, a Ray Data
actor pool. Writes ``results.md``, ``results.json`` and PNG plots to ``--out`` and
checks the performance targets of ``docs/design.md`` against floors and alternatives
measured in the same run (absolute budgets are marked as such).

Named models switched by multiplexed replicas are measured by ``benchmarks/multiplex.py``,
sharing from checkpoint files by ``benchmarks/checkpoint.py``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from benchkit.cluster import machine_info, start_ray
from benchkit.memory import memcpy_seconds
from benchkit.methods import EAGER_METHODS, EXPORT_METHODS, JIT_METHODS, METHODS
from benchkit.models import ModelSpec, build_model, tensor_count, weight_bytes
from benchkit.probe import LoadPoint, failed_point, measure_in_subprocess, measure_load, reference_output
from benchkit.report import write_report
from benchkit.targets import render_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` changes the defaults of the others."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run: small models, fewer points")
    parser.add_argument("--size", action="append", type=int_list, help="model sizes in MiB (repeatable or comma list)")
    parser.add_argument("--actors", type=int_list, help="actor counts for the actor sweep (e.g. 1,2,4,8)")
    parser.add_argument(
        "--load-actors", type=int, help="actors loading at once in the size sweep (default 4, --quick 2)"
    )
    parser.add_argument("--sweep-size", type=int, help="model size (MiB) of the actor sweep and the variants")
    parser.add_argument(
        "--methods",
        type=lambda text: [m for m in text.split(",") if m],
        default=list(METHODS),
        help=f"subset of {','.join(METHODS)} (default all)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--skip-variants", action="store_true", help="skip the tied/bfloat16 figure")
    parser.add_argument("--skip-task", action="store_true", help="skip the task-mode figure")
    parser.add_argument("--skip-data", action="store_true", help="skip the Ray Data figure (skipped by --quick)")
    args = parser.parse_args(argv)
    args.size = sorted({size for sizes in args.size for size in sizes}) if args.size else None
    if args.quick:
        args.size = args.size or [64]
        args.actors = args.actors or [2]
        args.load_actors = args.load_actors or 2
        args.sweep_size = args.sweep_size or 64
        args.task_sizes = [16, 64]
        args.variant_methods = ["zerocopy"]
        args.skip_data = True
        args.data_rows, args.data_size = 128, 32
    else:
        args.size = args.size or [64, 256, 1024]
        args.actors = args.actors or [1, 2, 4, 8]
        args.load_actors = args.load_actors or 4
        args.sweep_size = args.sweep_size or 256
        args.task_sizes = [64, 256]
        args.variant_methods = ["zerocopy", "ray_zero_copy_env"]
        args.data_rows, args.data_size = 512, 64
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


class Progress:
    """Timestamped progress lines."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {message}", flush=True)


class Runner:
    """Runs the measurements, keeping one built model at a time."""

    def __init__(self, args: argparse.Namespace, workdir: Path, progress: Progress) -> None:
        self.args = args
        self.workdir = workdir
        self.progress = progress
        self._spec: ModelSpec | None = None
        self._model: Any = None
        self._expected: Any = None
        self.memcpy: dict[int, float] = {}
        self.models: dict[str, dict[str, Any]] = {}

    def model(self, spec: ModelSpec) -> tuple[Any, Any]:
        """The model for ``spec`` and its reference output (built once in a row)."""
        if spec != self._spec:
            self._model = self._expected = None
            gc.collect()
            self.progress(f"building {spec.label}")
            self._model = build_model(spec)
            self._expected = reference_output(self._model)
            self._spec = spec
            self.models[spec.label] = {"weight_bytes": weight_bytes(self._model), "tensors": tensor_count(self._model)}
            if not spec.scripted and not spec.exported and not spec.tied and spec.dtype == "float32":
                self.memcpy[spec.size_mib] = memcpy_seconds(self._model)
        return self._model, self._expected

    def point(self, method_name: str, spec: ModelSpec, n_actors: int) -> LoadPoint:
        """Measure one method, model and actor count (0: the driver step only); never raises."""
        method = METHODS[method_name]
        try:
            model, expected = self.model(spec)
            if method.env:
                point = measure_in_subprocess(method, spec, model, n_actors, self.workdir)
            else:
                point = measure_load(method, spec, model, n_actors, self.workdir, expected)
        except Exception as exc:
            point = failed_point(method, spec, n_actors, f"{type(exc).__name__}: {exc}")
        if point.error:
            self.progress(f"  {method.label}, {spec.label}, {n_actors} actors: FAILED {point.error}")
        elif not n_actors:
            self.progress(f"  {method.label}, {spec.label}: driver step {point.prepare_s:.2f} s")
        else:
            load, load_forward = statistics.median(point.load_s), statistics.median(point.load_forward_s)
            self.progress(
                f"  {method.label}, {spec.label}, {n_actors} actors: load + first forward "
                f"{load_forward * 1e3:.0f} ms (load {load * 1e3:.1f} ms), memory {point.memory_ratio:.2f}x, "
                f"driver {point.prepare_s:.2f} s"
            )
        return point


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure; returns the raw results."""
    progress = Progress()
    eager = [m for m in args.methods if m in EAGER_METHODS]
    jit = [m for m in args.methods if m in JIT_METHODS]
    exported = [m for m in args.methods if m in EXPORT_METHODS]
    results: dict[str, Any] = {"machine": machine_info(), "args": {k: v for k, v in vars(args).items() if k != "out"}}
    results["args"]["out"] = str(args.out)
    store_mib = 2 * max([*args.size, args.sweep_size]) + 512
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ray_zerocopy_bench_", dir=args.out) as tmp:
        runner = Runner(args, Path(tmp), progress)
        points: list[dict[str, Any]] = []
        largest = ModelSpec(max(args.size))
        progress(f"figure 0: the driver step from a fresh start, {largest.label} (a new Ray per method)")
        for name in eager:
            start_ray(store_mib, pretouch=False)
            try:
                points.append({"figure": "fresh", **runner.point(name, largest, 0).to_dict()})
            finally:
                ray.shutdown()
        progress(f"starting a local Ray (2 CPUs, {store_mib} MiB object store, written over once)")
        start_ray(store_mib)
        try:
            results.update(sweeps(args, runner, progress, points, eager, jit, exported))
        finally:
            ray.shutdown()
    results["elapsed_s"] = time.perf_counter() - progress.start
    return results


def sweeps(
    args: argparse.Namespace,
    runner: Runner,
    progress: Progress,
    points: list[dict[str, Any]],
    eager: list[str],
    jit: list[str],
    exported: list[str],
) -> dict[str, Any]:
    """The figures measured on one Ray whose store was written over once; the results to add."""
    progress(f"figure 1: load vs model size {args.size} MiB, {args.load_actors} actors")
    for size in args.size:
        for name in eager:
            points.append({"figure": "size", **runner.point(name, ModelSpec(size), args.load_actors).to_dict()})

    counts = [n for n in args.actors if not (args.sweep_size in args.size and n == args.load_actors)]
    progress(f"figure 2: load vs actor count {args.actors} at {args.sweep_size} MiB")
    for n in counts:
        for name in eager:
            points.append({"figure": "actors", **runner.point(name, ModelSpec(args.sweep_size), n).to_dict()})

    progress(f"figure 3: variants (tied, bfloat16) at {args.sweep_size} MiB")
    variant_methods = [m for m in eager if m in args.variant_methods and not args.skip_variants]
    for spec in (ModelSpec(args.sweep_size, tied=True), ModelSpec(args.sweep_size, "bfloat16")):
        for name in variant_methods:
            points.append({"figure": "variants", **runner.point(name, spec, args.load_actors).to_dict()})

    for figure, names, spec in (
        ("jit", jit, ModelSpec(args.sweep_size, scripted=True)),
        ("export", exported, ModelSpec(args.sweep_size, exported=True)),
    ):
        if names:
            progress(f"figure 4 ({figure}): {spec.label}")
            for name in names:
                points.append({"figure": figure, **runner.point(name, spec, args.load_actors).to_dict()})
    results: dict[str, Any] = {"points": points}

    if not args.skip_task and "zerocopy" in args.methods:
        from benchkit.tasks import measure_task_mode

        progress(f"figure 5: task mode per-call latency at {args.task_sizes} MiB")
        task_results = []
        for size in args.task_sizes:
            model, _ = runner.model(ModelSpec(size))
            for call, task in measure_task_mode(model).items():
                task_results.append({"size_mib": size, "call": call, **task})
                progress(
                    f"  {size} MiB, {call}: task {task['zerocopy_s'] * 1e3:.1f} ms, "
                    f"local {task['local_s'] * 1e3:.1f} ms, bare task {task['bare_task_s'] * 1e3:.1f} ms, "
                    f"overhead {task['overhead_s'] * 1e3:+.1f} ms"
                )
        results["task"] = task_results

    if not args.skip_data:
        from benchkit.data import measure_data_pipeline, warm_up_data_pipeline

        progress(f"figure 6: Ray Data map_batches, {args.data_rows} rows, {args.data_size} MiB, pool of 2")
        spec = ModelSpec(args.data_size)
        data_results = []
        model, _ = runner.model(spec)
        warm_up_data_pipeline()
        for name in [m for m in ("zerocopy", "ray_put") if m in args.methods]:
            model, _ = runner.model(spec)
            data = measure_data_pipeline(name, spec, model, runner.workdir, args.data_rows, 16, 2)
            data_results.append({"size_mib": args.data_size, **data})
            first, total = data["first_batch_s"], data["total_s"]
            progress(f"  {METHODS[name].label}: first batch {first:.2f} s, total {total:.2f} s")
        results["data"] = data_results
    results["memcpy_s"] = runner.memcpy
    results["models"] = runner.models
    return results


def main(argv: list[str] | None = None) -> None:
    """Run, print the tables, write results.md, results.json and the plots."""
    args = parse_args(argv)
    results = run(args)
    write_report(args.out, "results", results, render_results(results, args.out), f", plots in {args.out}")


if __name__ == "__main__":
    main()
