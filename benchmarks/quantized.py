"""Quantized benchmark: a torchao int8 weight-only model in N actors, shared vs quantized per actor vs torch.load.

A float32 model of ``--size-mib`` (default 1024) quantized with torchao's
``Int8WeightOnlyConfig``, given to ``--actors`` (default 4) actors that all load at the
same moment: ray-zerocopy (quantized once on the driver, shared), each actor quantizing
its own copy from the float checkpoint, and ``torch.load`` of the quantized state dict per
actor (see :mod:`benchkit.quantized` for how each is measured). Targets (issue 26), as
ratios in the same run: node memory <= 1.05 x the quantized bytes; load + first forward
<= 0.1 x that of quantizing per actor. Writes ``quantized.md`` and ``quantized.json`` to
``--out``; ``benchmarks/docs_page.py`` adds the page to ``docs/benchmarks.md``.

Run: ``nox -s bench_quantized`` (about three minutes on two cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from benchkit.cluster import machine_info, start_ray
from benchkit.quantized import LABELS, METHODS, layers_for, measure
from benchkit.report import mib, seconds, table, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Limits of the targets, as ratios measured in the same run.
NODE_RATIO, LOAD_RATIO = 1.05, 0.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="float32 weights of the model before quantizing")
    parser.add_argument("--actors", type=int, default=4, help="actors loading at once")
    parser.add_argument(
        "--methods",
        type=lambda text: [m for m in text.split(",") if m],
        default=list(METHODS),
        help=f"subset of {','.join(METHODS)}",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    return parser.parse_args(argv)


def render(results: dict[str, Any]) -> str:
    """The markdown page: one row per method, then the targets and the machine."""
    args = results["args"]
    rows = [
        (
            LABELS[r["method"]],
            f"{seconds(r['load_forward_median_s'])} ({seconds(max(r['load_forward_s']))})",
            seconds(statistics.median(r["load_s"])),
            seconds(statistics.median(r["warm_forward_s"])),
            mib(r["store_growth_bytes"]),
            mib(r["private_growth_bytes"]),
            f"{mib(r['node_bytes'])} ({r['node_ratio']:.2f}x)",
        )
        for r in results["runs"]
    ]
    quantized = results["runs"][0]["quantized_bytes"] if results["runs"] else 0
    lines = [
        f"# Quantized: torchao int8 weight-only of a {args['size_mib']} MiB float32 model, {args['actors']} actors",
        "",
        f"Quantized bytes (int8 values, scales, zero points): {mib(quantized)}.",
        "",
        table(
            [
                "method",
                "load + first forward per actor, median (max)",
                "load alone, median",
                "a later forward, one actor at a time, median",
                "object store growth",
                "actors' private growth",
                "node memory (/ quantized bytes)",
            ],
            rows,
        ),
        "",
    ]
    runs = {r["method"]: r for r in results["runs"]}
    ours = runs.get("zerocopy")
    if ours:
        node_ok = ours["node_ratio"] <= NODE_RATIO
        lines.append(
            f"- node memory <= {NODE_RATIO} x the quantized bytes for {args['actors']} actors: "
            f"{'met' if node_ok else 'NOT met'} ({ours['node_ratio']:.3f} x)"
        )
        per_actor = runs.get("quantize_per_actor")
        if per_actor:
            ratio = ours["load_forward_median_s"] / per_actor["load_forward_median_s"]
            lines.append(
                f"- load + first forward <= {LOAD_RATIO} x quantizing per actor: "
                f"{'met' if ratio <= LOAD_RATIO else 'NOT met'} ({seconds(ours['load_forward_median_s'])} vs "
                f"{seconds(per_actor['load_forward_median_s'])} = {ratio:.3f} x); load alone "
                f"{seconds(statistics.median(ours['load_s']))} vs {seconds(statistics.median(per_actor['load_s']))} = "
                f"{statistics.median(ours['load_s']) / statistics.median(per_actor['load_s']):.3f} x"
            )
        loaded = runs.get("torch_load")
        if loaded:
            ratio = ours["load_forward_median_s"] / loaded["load_forward_median_s"]
            lines.append(
                f"- against torch.load of the quantized state dict: load + first forward {ratio:.3f} x, node memory "
                f"{loaded['node_ratio']:.2f} x -> {ours['node_ratio']:.2f} x of the quantized bytes"
            )
        lines.append(f"- the driver's wrap of the quantized model: {seconds(ours['prepare_s'])}")
        lines.append(
            f"- the forward itself: {seconds(statistics.median(ours['warm_forward_s']))} for one actor alone "
            "(torchao's int8 weight-only linear on the CPU converts each weight to the activations' dtype per call); "
            f"with {args['actors']} actors on {results['machine']['cores']} cores running their first forwards at "
            "once, it is most of load + first forward for every method"
        )
    machine = results["machine"]
    load = results["load_average"]
    lines += [
        "",
        f"Machine: {machine['cores']} cores, {machine['memory_gib']} GiB, torch {machine['torch']}, "
        f"torchao {results['torchao']}, ray {machine['ray']}, {machine['date']}; load average (1 min) "
        f"{load['start']:.2f} at the start, {load['end']:.2f} at the end (the machine is shared: timings are noisy). "
        "Each method starts fresh actors, warmed up (a small quantized model got the method's own way and run) "
        "before all of them load at once; node memory is the object store's growth plus every "
        "actor's private growth (Pss - Pss_Shmem, heap trimmed) after its first forward.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torchao

    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    layers = layers_for(args.size_mib)
    store_mib = args.size_mib // 2 + 512
    progress(f"starting a local Ray (2 CPUs, {store_mib} MiB object store, written over once)")
    start_ray(store_mib)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine_info(),
        "torchao": torchao.__version__,
        "args": {"size_mib": args.size_mib, "actors": args.actors, "layers": layers, "methods": args.methods},
        "load_average": {"start": os.getloadavg()[0]},
    }
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="ray_zerocopy_quantized_", dir=args.out) as tmp:
            for method in args.methods:
                progress(f"method {method}")
                run = measure(method, layers, args.actors, Path(tmp), progress)
                progress(
                    f"  load + first forward {seconds(run['load_forward_median_s'])}, node {mib(run['node_bytes'])} "
                    f"({run['node_ratio']:.2f}x)"
                )
                runs.append(run)
    finally:
        ray.shutdown()
    results["runs"] = runs
    results["load_average"]["end"] = os.getloadavg()[0]
    results["elapsed_s"] = time.perf_counter() - start
    write_report(args.out, "quantized", results, render(results))


if __name__ == "__main__":
    main()
