"""Write ``docs/benchmarks.md`` (and its plots in ``docs/_static/bench/``) from a results run.

Usage: ``python benchmarks/docs_page.py [benchmarks/results/results.json]`` after
``nox -s bench``. The page shows the same tables as ``results.md``, with the plots copied
next to the docs so Sphinx can find them; every figure in its prose comes from the
results, except a profile that says its date.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchkit.methods import METHODS
from benchkit.report import mib, seconds
from benchkit.targets import render_results

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = ROOT / "benchmarks" / "results" / "results.json"
PAGE = ROOT / "docs" / "benchmarks.md"
STATIC = ROOT / "docs" / "_static" / "bench"

INTRO = """# Benchmarks

How fast does a worker get a ready model, and how much memory do N workers cost? The
benchmark suite answers both against what users would otherwise do, measured the same
way in one run on the same model:

- **ray-zerocopy** actor mode (`ActorWrapper(model)`, `wrapper.load()` in each actor);
- **`torch.load`** of a `torch.save`d state dict in each actor, into a freshly allocated model;
- **`torch.load(path, mmap=True)`** + `load_state_dict(..., assign=True)` into a model built
  on the meta device: the strongest plain-PyTorch load, whose weights are the file's pages
  in the page cache, shared by the actors mapping them;
- **`ray.put(model)`** on the driver and `ray.get` in each actor;
- Ray's experimental **`RAY_ENABLE_ZERO_COPY_TORCH_TENSORS=1`** + `ray.put` (set before
  `import ray` in a second driver connected to the same cluster; the tables show that its
  weights really map the object store);
- **safetensors** memory-mapped from a file in `/dev/shm` (`load_state_dict(..., assign=True)`);
- for TorchScript, **`torch.jit.load`** of a saved traced model against the jit backend, and
  as a floor `torch.jit.load` of the weightless archive the jit backend stores (the code
  every TorchScript load compiles, with placeholder weights);
- for `torch.export`, **`torch.export.load`** of a saved `.pt2` in each actor (then
  `.module()`) against the export backend (`load()` returns the program; `.module()` built too).

The model is a transformer-like stack (16 blocks of attention projections, MLP and layer
norms, plus embedding and output head): about 200 tensors whatever its size, so per-tensor
and per-byte costs can be told apart. Variants: tied embedding/output weights, bfloat16,
traced TorchScript. Each point starts fresh actors (torch imported and warmed up first),
then asks all of them to load at the same moment; each actor times its own load and its
first forward. The headline figure is load + first forward, what a request waits for:
a zero-copy model pays its page faults in the first forward, so the load alone (shown
beside it) flatters it. The sweeps run on one Ray whose object store is written over once
at start-up, which speeds up the driver step of the methods that write into it; the
driver step is therefore also measured from a fresh start (a new Ray per method, nothing
written into its store yet, a new file), and the driver targets use that figure. The
targets below, and the reasons for them, are those of {doc}`design` ("Performance
targets"); each is checked against an alternative or a floor measured in the same run,
since the machine was shared and timings are noisy, except two budgets the design states
in absolute time, which say so.

## Reproduce

```console
$ nox -s bench                      # default run, {elapsed} on the machine below
$ nox -s bench -- --quick           # a few minutes, small model, 2 actors
$ nox -s bench -- --size 64,512 --actors 1,4 --methods zerocopy,ray_put
$ nox -s bench_named                # named models switched by multiplexed replicas
$ nox -s bench_checkpoint           # from checkpoint files; -- --scale-gib 10 for the scale point
$ nox -s bench_quantized            # a torchao int8 model in 4 actors (needs torchao)
$ nox -s bench_cluster              # as root: K Ray nodes over tc-limited links (-- --nodes 2,4,8)
$ python benchmarks/docs_page.py    # regenerate this page from benchmarks/results/
```

`nox -s demo` runs the short version: one 256 MiB model, 4 actors, ray-zerocopy against
`ray.put`. Results land in `benchmarks/results/` (`results.md`, `results.json`, PNG plots;
`multiplex.md`, `checkpoint.md`, `quantized.md` and `cluster.md` from the other sessions, added to this page).

"""


#: Figures that no run of the suite measures: a profile taken once, with its date.
PROFILE = """- **Profile of 2026-11-30** (2 cores, one actor, the 256 MiB benchmark model; not
  measured by the run below): `wrapper.load()` takes about 7 ms in a fresh actor: `ray.get`
  of the payload ~3 ms, rebuilding the tensor views and `nn.Parameter`s ~2 ms, unpickling the
  skeleton ~1 ms, `eval()` ~0.4 ms; in a warm process about 4 ms. Ray's
  `RAY_ENABLE_ZERO_COPY_TORCH_TENSORS` path does the same kind of per-tensor work inside
  `ray.get` (about 5 ms alone). `torch.export.load` + `.module()` of the benchmark
  transformer takes 0.15-0.2 s per actor alone, whatever happens to the weights; scripted
  (not traced) models whose submodules share a class `torch.jit.load` in 12-16 ms.
"""


def _points(results: dict[str, Any], **where: Any) -> list[dict[str, Any]]:
    return [
        p
        for p in results.get("points", [])
        if not p.get("error") and all({**p["spec"], **p}.get(k) == v for k, v in where.items())
    ]


def notes(results: dict[str, Any]) -> str:
    """How to read the targets, every figure taken from ``results`` (or from the dated profile)."""
    lines = ["## Reading the targets", ""]
    sweep = results["args"]["sweep_size"]
    crowded = _points(results, method="zerocopy", size_mib=sweep, dtype="float32", tied=False, scripted=False)
    crowded = [p for p in crowded if p["actors"] > 2]
    if crowded:
        loads = [t for p in crowded for t in p["load_s"]]
        lines.append(
            f"- **Load alone** is the time of `wrapper.load()` in a fresh actor, the first use of ray-zerocopy "
            f"in that process. With more actors than the {results['machine']['cores']} cores, per-actor times "
            f"spread with scheduling ({seconds(min(loads))} to {seconds(max(loads))} in this run at {sweep} MiB), "
            "so single runs of the zero-copy methods can swap order."
        )
    largest = max(results["args"]["size"])
    for point in _points(results, figure="size", method="zerocopy", size_mib=largest):
        forward = statistics.median(point["load_forward_s"]) - statistics.median(point["load_s"])
        lines.append(
            f"- **Load + first forward**: every zero-copy method pays one page fault per 4 KiB weight page in "
            f"the first forward (the weights are mapped, not read, at load): here {seconds(forward)} of "
            f"first forward at {largest} MiB, against {seconds(statistics.median(point['load_s']))} of load."
        )
    forwards = [  # torch.load(mmap=True) faults its file pages in during the forward: not comparable
        (METHODS[p["method"]].label, (p["extra_bytes"] - p["extra_bytes_loaded"]) / p["actors"])
        for p in _points(results, figure="size", size_mib=min(results["args"]["size"]))
        if p["method"] != "torch_load_mmap"
    ]
    if forwards:
        lines.append(
            "- **Extra memory** is judged after the first forward. A forward adds private memory in every "
            "actor whatever the method (kernel workspaces, allocator caches): in this run at "
            f"{min(results['args']['size'])} MiB, per actor, "
            + ", ".join(f"{mib(growth)} ({name})" for name, growth in forwards)
            + ". It is a fixed cost per process, so with the smallest model and several actors it alone can "
            'exceed the 2% the target allows; when the verdict is "NOT met" for that reason, the weights are '
            "still held once, as the extra memory after load (before any forward) beside it shows."
        )
    lines.append(
        "- **Driver wrap** writes each weight byte once into the object store; the fresh-start figure "
        "shows it next to one plain memcpy of the weights into fresh memory, measured in the same run."
    )
    lines.append(
        "- **Task mode** overhead is measured on a warm worker, interleaving the three kinds of call; the "
        "embedding lookup isolates the per-call cost, the full forward adds its own (noisier) compute time."
    )
    ours = _points(results, figure="jit", method="jit_zerocopy")
    floor = _points(results, figure="jit", method="jit_skeleton_load")
    if ours and floor:
        load, floor_load = (statistics.median(p[0]["load_s"]) for p in (ours, floor))
        lines.append(
            f"- **TorchScript load** is dominated by `torch.jit.load` compiling the archive's code, not by the "
            f"weights: loading the weightless archive alone takes {seconds(floor_load)} of the "
            f"{seconds(load)} load in this run (tracing gives each of the ~100 submodules its own graph). "
            "`torch.jit.load` of the saved model pays the same compilation plus reading every weight byte."
        )
    ours = _points(results, figure="export", method="export_zerocopy")
    baseline = _points(results, figure="export", method="export_load")
    if ours and baseline:
        load, baseline_load = (statistics.median(p[0]["load_s"]) for p in (ours, baseline))
        lines.append(
            "- **torch.export load** is dominated by torch's own deserialization of the program's graph and "
            f"by building `.module()`, not by the weights (shared zero-copy): {seconds(load)} per actor here, "
            f"against {seconds(baseline_load)} for `torch.export.load`; "
            "the ratio moves with how slow the baseline's disk read is in that run."
        )
    return "\n".join(lines) + "\n" + PROFILE + "\n"


#: Pages of the other benchmark scripts, added when their results are next to the suite's.
SECTIONS = {
    "multiplex": """## Named models: multiplexed switches (`nox -s bench_named`)

Models published by name (`publish`) and emulated `@serve.multiplexed` replicas that
each keep fewer than all of them loaded, so every request is a switch to a model the
replica does not hold: `load_published(name)` against `torch.load` of a checkpoint per
switch, read or mapped (`mmap=True`, `assign=True`), the page cache warm. The headline is
switch + first forward, what the request waits for. Node memory counts the object
store's growth, every replica's private growth and the holder actor's process, over the
same weight bytes for every method.
""",
    "checkpoint": """## From checkpoint files (`nox -s bench_checkpoint`)

A random GPT-2-like model written with `save_pretrained` (and `torch.save` of its state
dict), shared from its files into the object store: `ActorWrapper.from_checkpoint` against
the plain PyTorch path (build, `load_state_dict(torch.load(...))`, `ActorWrapper`) and
transformers' `from_pretrained` + `ActorWrapper`, beside a floor (one read of the files
plus one copy of their bytes). Each method starts with the files out of the page cache,
in its own fresh process on a new Ray. `-- --scale-gib 10` is the scale point (not in
CI): a 10 GiB checkpoint loaded in 4 actors, with the peak node memory.
""",
    "checkpoint-scale": """## Scale point: a 10 GiB checkpoint on a 24 GiB machine

`nox -s bench_checkpoint -- --scale-gib 10 --out DIR`, its `checkpoint.md` saved here as
`checkpoint-scale.md`: the floor and `Checkpoint` only (the plain PyTorch path would need
about three times the weights, more than the machine has), then 4 actors load the stored model.
""",
    "quantized": """## Quantized models (`nox -s bench_quantized`)

A stack of float32 `nn.Linear` layers quantized with torchao's `Int8WeightOnlyConfig`
(int8 values plus per-row scales: about a quarter of the bytes), given to 4 actors that
load at the same moment: ray-zerocopy (quantized once on the driver, `ActorWrapper`,
`wrapper.load()`: the int8 values and scales map the object store), each actor quantizing
its own copy (the float checkpoint mapped with `torch.load(mmap=True)`, then `quantize_`:
what users do today) and `torch.load` of the quantized state dict in each actor. Node
memory is the object store's growth plus every actor's private growth after its first
forward, over the quantized bytes.
""",
    "cluster": """## Every node at once over limited links (`nox -s bench_cluster`)

K Ray nodes and a head, each in its own network namespace on one bridge, every link
limited with `tc` in both directions, so that transfers are bound by the links and not by
this machine's two cores (the session needs root). The driver on the head builds the
model; one actor per node, pinned there, is started and warmed, then all are asked to load
at the same moment and run a first forward. `today`: `ActorWrapper(model)` on the head and
`wrapper.load()` on each node, so every node pulls from the owner's node; `plain`:
`ray.put(model)` and `ray.get` on each node. Each method runs on a fresh Ray cluster. A
broadcast can reach every node in about one transfer time whatever K (nodes forwarding
chunks they hold while receiving the next, as in a chain or tree); here the head sends
every copy, so the time grows with K while the head's link stays busy.
""",
}


def main(results_path: Path) -> None:
    """Render the page and copy the plots."""
    results = json.loads(results_path.read_text())
    STATIC.mkdir(parents=True, exist_ok=True)
    body = render_results(results, results_path.parent, plot_prefix="_static/bench/")
    for png in results_path.parent.glob("*.png"):
        shutil.copy(png, STATIC / png.name)
    body = body.split("\n", 2)[2]  # drop the results file's own title
    before, after = body.split("## Models", 1)
    elapsed = f"{results['elapsed_s'] / 60:.0f} minutes" if results.get("elapsed_s") else "some minutes"
    page = INTRO.replace("{elapsed}", elapsed) + before + notes(results) + "## Models" + after
    for stem, intro in SECTIONS.items():  # from `bench_named`, `bench_checkpoint`, `bench_quantized`, `bench_cluster`
        other = results_path.parent / f"{stem}.md"
        if other.exists():
            page = page.rstrip("\n") + "\n\n" + intro + other.read_text().split("\n", 1)[1]
    PAGE.write_text(page)
    print(f"wrote {PAGE} and {len(list(STATIC.glob('*.png')))} plots in {STATIC}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RESULTS)
