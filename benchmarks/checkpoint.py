"""Checkpoint benchmark: from files to a stored model, ``Checkpoint`` against what users do today.

A random GPT-2-like model (tied head; ``--size-mib``, default 512) is written with
``save_pretrained`` (and, for the plain path, ``torch.save`` of its state dict) into a
temporary directory; then each method of :mod:`benchkit.checkpoints` shares it from
its files, each on a new Ray in its own fresh driver process, the files out of the page
cache. Targets (docs/design.md, issue "Checkpoints straight into the object store"), as
ratios in the same run: time <= 1.3 x the floor, <= 0.7 x the plain PyTorch path and
<= 1.1 x ``from_pretrained`` + wrap; peak private memory <= 0.1 x the weights; node memory
afterwards <= 1.1 x the weights. Writes ``checkpoint.md`` and ``checkpoint.json`` to ``--out``.

Scale point (not in CI): ``--scale-gib 10`` shares a checkpoint of 10 GiB (sharded) into a
store big enough for it and loads it in 4 actors, reporting the peak node memory; by
default only the floor and ``Checkpoint`` run there (the plain path needs about 3 x the
weights). It needs the machine to itself: about 2 x the weights of memory and disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
from benchkit.checkpoints import LABELS, METHODS, measure_in_subprocess, node_after, write_checkpoint
from benchkit.cluster import machine_info, start_ray
from benchkit.report import mib, seconds, table, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
#: Limits of the targets, as ratios measured in the same run.
FLOOR_RATIO, PLAIN_RATIO, PRETRAINED_RATIO, PRIVATE_RATIO, NODE_RATIO = 1.3, 0.7, 1.1, 0.1, 1.1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; ``--quick`` and ``--scale-gib`` change the defaults of the others."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, help="weights of the model in MiB (default 512, --quick 64)")
    parser.add_argument("--quick", action="store_true", help="a short run: a 64 MiB model")
    parser.add_argument("--scale-gib", type=float, help="the scale point: a checkpoint of this many GiB, 4 actors")
    parser.add_argument("--actors", type=int, help="actors loading the stored model (default 0; scale point 4)")
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed runs per method after the one sampling node memory (default 3, --quick 1, scale point 0: "
        "its time is the sampled run's)",
    )
    parser.add_argument(
        "--methods",
        type=lambda text: [m for m in text.split(",") if m],
        help=f"subset of {','.join(METHODS)} (default all; scale point floor,checkpoint)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    args = parser.parse_args(argv)
    if args.scale_gib:
        args.size_mib = args.size_mib or int(args.scale_gib * 1024)
        args.methods = args.methods or ["floor", "checkpoint"]
        args.actors = 4 if args.actors is None else args.actors
        args.repeats = args.repeats or 0
    args.repeats = (1 if args.quick else 3) if args.repeats is None else args.repeats
    args.size_mib = args.size_mib or (64 if args.quick else 512)
    args.methods = args.methods or list(METHODS)
    args.actors = args.actors or 0
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    return args


def target_rows(runs: dict[str, dict[str, Any]], weights: int) -> list[list[str]]:
    """The checkpoint targets: target, measured, verdict."""
    ours = runs.get("checkpoint")
    if not ours or ours.get("error"):
        return []

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    rows = []
    for name, limit in (("floor", FLOOR_RATIO), ("plain", PLAIN_RATIO), ("from_pretrained", PRETRAINED_RATIO)):
        other = runs.get(name)
        if other and not other.get("error"):
            ratio = ours["seconds"] / other["seconds"]
            rows.append(
                [
                    f"time from files to stored model <= {limit} x {name}",
                    f"{ratio:.2f} ({seconds(ours['seconds'])} vs {seconds(other['seconds'])})",
                    verdict(ratio <= limit),
                ]
            )
    peak = ours["peak_private"] / weights
    plain = runs.get("plain")
    against = f" (plain PyTorch: {plain['peak_private'] / weights:.2f} x)" if plain and not plain.get("error") else ""
    rows.append(
        [
            f"peak private memory while sharing <= {PRIVATE_RATIO} x weights",
            f"{peak:.3f} x{against}",
            verdict(peak <= PRIVATE_RATIO),
        ]
    )
    node = node_after(ours) / weights
    rows.append(
        [
            f"node memory afterwards (store + files' page cache + private) <= {NODE_RATIO} x weights",
            f"{node:.2f} x",
            verdict(node <= NODE_RATIO),
        ]
    )
    return rows


def render(results: dict[str, Any]) -> str:
    """The markdown page: one row per method, then the targets (and the actors, if any)."""
    weights = results["weight_bytes"]
    rows = []
    for name, run in results["runs"].items():
        if run.get("error"):
            rows.append([LABELS[name], run["error"], "", "", ""])
            continue
        stored = name != "floor"
        rows.append(
            [
                LABELS[name],
                seconds(run["seconds"]),
                f"{run['peak_private'] / weights:.3f} x",
                f"{node_after(run) / weights:.2f} x" if stored else "-",
                f"{run['peak_node'] / weights:.2f} x" if stored else "-",
            ]
        )
    args = results["args"]
    lines = [
        f"# From checkpoint files to a stored model: GPT-2-like, {mib(weights)} of float32 weights "
        f"in {results['files']} file(s)",
        "",
        table(
            [
                "method",
                "time from files to stored model, median",
                "peak private memory / weights",
                "node memory afterwards / weights",
                "peak node memory while sharing / weights",
            ],
            rows,
        ),
        "",
        table(["target", "measured", "verdict"], target_rows(results["runs"], weights)),
    ]
    with_actors = [(name, run) for name, run in results["runs"].items() if run.get("actors")]
    for name, run in with_actors:
        loads = [actor["load_forward_s"] for actor in run["actors"]]
        growth = [actor["anon_growth"] for actor in run["actors"]]
        lines += [
            "",
            f"{LABELS[name]}, then {len(loads)} actors load it and run a first forward: load + first forward "
            f"{seconds(min(loads))} to {seconds(max(loads))} per actor, private growth {mib(min(growth))} to "
            f"{mib(max(growth))} per actor; node memory afterwards "
            f"{mib(run['node_with_actors'])} ({run['node_with_actors'] / weights:.2f} x the weights); peak while "
            f"sharing {mib(run['peak_node'])} ({run['peak_node'] / weights:.2f} x).",
        ]
    machine = results["machine"]
    lines += [
        "",
        f"Machine: {machine['cores']} cores, {machine['memory_gib']} GiB, torch {machine['torch']}, "
        f"ray {machine['ray']}, {machine['date']}; run time {results['elapsed_s'] / 60:.1f} min "
        f"(model written in {results['write_s']:.0f} s). Each method runs in its own fresh driver process on a new "
        "Ray, the files out of the page cache; it runs once on a tiny checkpoint first, then once sampling the "
        f"node's memory every 0.1 s, then {args['repeats']} more time(s) for the median time (without those "
        "samples, which cost CPU time; with none, the sampled run's time). Private memory is "
        "`Pss_Anon` (the process's own copies, not the file pages it maps); node memory is the object store's "
        "growth, plus the files' pages in the page cache (`mincore`), plus the sharing process's private growth, "
        f"the model dropped and the wrapper kept. {args['actors']} actors.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the checkpoint, measure every method, write checkpoint.md and checkpoint.json."""
    args = parse_args(argv)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.1f} s] {message}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    results["args"]["actors"] = args.actors
    with tempfile.TemporaryDirectory(prefix="ray_zerocopy_checkpoint_", dir=args.out) as tmp:
        progress(f"writing a {args.size_mib} MiB GPT-2-like checkpoint (save_pretrained) and a tiny one")
        state_dict = bool({"plain", "checkpoint_pt"} & set(args.methods))
        directory, warmup = Path(tmp) / "model", Path(tmp) / "tiny"
        write_checkpoint(warmup, 1)
        weights = write_checkpoint(directory, args.size_mib, state_dict=state_dict)
        results["weight_bytes"] = weights
        results["files"] = len(list(directory.glob("*.safetensors")))
        results["write_s"] = time.perf_counter() - start
        store_mib = int(weights * 1.25 / 2**20) + 512
        runs: dict[str, dict[str, Any]] = {}
        for method in args.methods:
            progress(f"{LABELS[method]}: a new Ray ({store_mib} MiB store), a fresh driver process")
            start_ray(store_mib, pretouch=False)
            try:
                request = {
                    "address": ray.get_runtime_context().gcs_address,
                    "method": method,
                    "directory": str(directory),
                    "warmup": str(warmup),
                    "actors": args.actors,
                    "repeats": args.repeats,
                }
                runs[method] = measure_in_subprocess(request)
            finally:
                ray.shutdown()
            run = runs[method]
            progress(
                f"  FAILED {run['error']}"
                if run.get("error")
                else f"  {seconds(run['seconds'])}, peak private {mib(run['peak_private'])}, "
                f"node afterwards {mib(node_after(run))}"
            )
    results["runs"] = runs
    results["elapsed_s"] = time.perf_counter() - start
    write_report(args.out, "checkpoint", results, render(results))


if __name__ == "__main__":
    main()
