"""The main job, short: share one model across 4 actors and compare with naive loading.

Builds a model of ``--size-mib`` MiB (default 256) locally, starts a private local Ray
and lets 4 actors load it at once, first with ray-zerocopy's ``ActorWrapper``, then the
naive way (``ray.put(model)`` and ``ray.get`` in each actor). Prints per-actor load +
first forward (the headline: a zero-copy model pays its page faults in the first
forward), the load alone, the extra physical memory of each, and checks that every
output matches the driver's. The full suite is ``benchmarks/run.py`` (``nox -s bench``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import ray
from benchkit.cluster import start_ray
from benchkit.memory import private_bytes
from benchkit.methods import METHODS
from benchkit.models import ModelSpec, build_model, tensor_count, weight_bytes
from benchkit.probe import LoadPoint, measure_load, reference_output
from benchkit.report import mib, seconds, table

DEMO_METHODS = ("zerocopy", "ray_put")


def parse_args() -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=256, help="model weight size in MiB (default 256)")
    parser.add_argument("--actors", type=int, default=4, help="actors loading at once (default 4)")
    return parser.parse_args()


def print_tables(points: list[LoadPoint]) -> None:
    """The per-actor table and the summary table."""
    per_actor = []
    for point in points:
        pids = [key for key in point.private_growth if key != "driver"]
        for index, pid in enumerate(pids):
            per_actor.append(
                [
                    METHODS[point.method].label,
                    index,
                    seconds(point.load_forward_s[index]),
                    seconds(point.load_s[index]),
                    mib(point.private_growth[pid]),
                    f"{point.shared_fraction[index]:.0%}",
                ]
            )
    print(
        table(
            ["method", "actor", "load + first forward", "load alone", "private memory added", "weights in the store"],
            per_actor,
        )
    )
    print()
    summary = []
    for point in points:
        summary.append(
            [
                METHODS[point.method].label,
                seconds(statistics.median(point.load_forward_s)),
                seconds(statistics.median(point.load_s)),
                f"{mib(point.extra_bytes)} ({point.memory_ratio:.2f} x weights)",
                seconds(point.prepare_s),
                "yes" if point.outputs_equal else f"NO (max diff {point.max_abs_diff:.2g})",
            ]
        )
    print(
        table(
            [
                "method",
                "median load + first forward",
                "median load alone",
                "extra memory, all actors",
                "driver step",
                "outputs equal",
            ],
            summary,
        )
    )


def main() -> None:
    """Run the demo."""
    args = parse_args()
    spec = ModelSpec(args.size_mib)
    start = time.perf_counter()
    print(f"Building a {spec.label} model locally...", flush=True)
    model = build_model(spec)
    expected = reference_output(model)
    print(f"  {weight_bytes(model) / 2**20:.0f} MiB of weights in {tensor_count(model)} tensors", flush=True)
    print("Starting a local Ray (2 CPUs)...", flush=True)
    start_ray(object_store_mib=2 * args.size_mib + 256)
    points = []
    try:
        with tempfile.TemporaryDirectory(prefix="ray_zerocopy_demo_") as workdir:
            for name in DEMO_METHODS:
                print(f"{METHODS[name].label}: {args.actors} actors loading at once...", flush=True)
                points.append(measure_load(METHODS[name], spec, model, args.actors, Path(workdir), expected))
    finally:
        ray.shutdown()
    print()
    print_tables(points)
    zerocopy, naive = points
    ready, naive_ready = (statistics.median(p.load_forward_s) for p in points)
    print()
    print(
        f"ray-zerocopy: each actor served its first request {seconds(ready)} after it started loading "
        f"({naive_ready / ready:.1f}x sooner than naive, {seconds(naive_ready)}); the load alone took "
        f"{seconds(statistics.median(zerocopy.load_s))} (naive {seconds(statistics.median(naive.load_s))}), "
        f"the rest is its first forward (page faults of the shared weights included). {args.actors} actors cost "
        f"{zerocopy.memory_ratio:.2f} x the weights in memory, naive {naive.memory_ratio:.2f} x. "
        f"Driver private memory now {mib(private_bytes())}."
    )
    print(
        "Extra memory = growth of Pss - Pss_Shmem (/proc/PID/smaps_rollup) of the actors and the "
        "driver, after load and first forward, plus the growth of Ray's object store bytes in use."
    )
    print(f"Done in {time.perf_counter() - start:.0f} s.")
    if not all(point.outputs_equal for point in points):
        raise SystemExit("outputs differ from the driver's model")


if __name__ == "__main__":
    main()
