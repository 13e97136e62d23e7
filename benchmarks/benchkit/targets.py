"""Rendering a run: one markdown table per figure, the targets of docs/design.md, the plots.

Each target is checked against what the same run measured, so a slow or busy machine
moves both sides together: a ratio to an alternative (the best zero-copy one), or to a
floor (``torch.jit.load`` of the weightless archive, a local call plus a bare Ray task).
The two budgets the design states in absolute time (the driver wrap of 1 GiB, and the
2 ms a task-mode call may add to its floors) say so in their row. Every target has a row:
"not measured" when a point it needs is missing or an alternative failed, "NOT met" when
ray-zerocopy's own point failed, gave other outputs or left a weight outside shared memory.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchkit.methods import EAGER_METHODS, METHODS, ZERO_COPY_ALTERNATIVES
from benchkit.report import median_max, mib, plot_lines, seconds, table

Point = dict[str, Any]

MEMORY_METHOD = (
    "Extra memory = growth, from just before the driver step to just after every actor has "
    'loaded ("after load") and again after every first forward ("after first forward"), of: '
    "`Pss - Pss_Shmem` (/proc/PID/smaps_rollup) summed over the actors and the driver, each "
    "process's heap trimmed with `malloc_trim` before reading; plus the bytes Ray's object store "
    "reports in use (the store is written over once at start-up, so those bytes are physical "
    "pages); plus the blocks of the benchmark's own files in /dev/shm (safetensors). PSS "
    "splits shared pages between processes, so no page is counted twice. The pages of a file on "
    "disk that a process maps (`torch.load(mmap=True)`) count in its PSS once touched; the page "
    "cache of a file no process maps (the one `torch.load` read) is not counted. The growth of "
    "`Shmem` in /proc/meminfo over the same interval is kept in results.json (`shmem_growth`) "
    "as a cross-check only: it is machine-wide and other processes on a shared machine move it. "
    "Peak extra driver memory of the driver step = the peak growth of the driver's private memory "
    "(sampled every 5 ms in a thread) plus what the step wrote into the object store or /dev/shm. "
    "The sweeps share one Ray whose object store was written over once at start-up (so the store's "
    "bytes in use are physical pages); the fresh-start figure gives each method a new Ray instead."
)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _select(points: Iterable[Point], **where: Any) -> list[Point]:
    """Points whose fields (or spec fields) equal ``where``."""
    chosen = []
    for point in points:
        fields = {**point["spec"], **point}
        if all(fields.get(key) == value for key, value in where.items()):
            chosen.append(point)
    return chosen


def _one(points: Iterable[Point], **where: Any) -> Point | None:
    found = [p for p in _select(points, **where) if not p.get("error")]
    return found[0] if found else None


def _cell(point: Point | None, render: Callable[[Point], str], missing: str = "-") -> str:
    if point is None:
        return missing
    if point.get("error"):
        return point["error"] if point["error"].startswith("n/a") else "failed"
    return render(point)


def _ratio(point: Point) -> float:
    """Extra memory / weights after every first forward."""
    return point["extra_bytes"] / point["weight_bytes"]


def _driver_peak(point: Point) -> float:
    """Peak extra driver memory of the driver step / weights: the peak growth of its private
    memory (sampled every 5 ms) plus what it wrote into the object store or /dev/shm.

    RSS is not used: the driver already maps the whole (pre-touched) object store.
    """
    written = point["store_growth"] + point.get("shm_files_growth", point.get("shmem_growth", 0))
    return (point["prepare_peak_private"] + written) / point["weight_bytes"]


def _loaded_ratio(point: Point) -> float:
    """Extra memory / weights after every load, before the forwards."""
    return point["extra_bytes_loaded"] / point["weight_bytes"]


def _base_points(points: list[Point]) -> list[Point]:
    """Untied float32 eager points of the size and actor sweeps (actors loading)."""
    base = {"dtype": "float32", "tied": False, "scripted": False}
    return [
        p
        for p in points
        if p["spec"] == {**p["spec"], **base} and not p["spec"].get("exported") and p["figure"] != "fresh"
    ]


def _label(name: str) -> str:
    return METHODS[name].label


def size_tables(points: list[Point], sizes: list[int], actors: int, methods: list[str]) -> list[str]:
    """Load, load + forward, memory and driver step against model size."""
    base = _base_points(points)
    headers = ["method"] + [f"{size} MiB" for size in sizes]
    out = []
    figures: list[tuple[str, Callable[[Point], str]]] = [
        (
            f"Load + first forward per actor, median (max), {actors} actors loading at once",
            lambda p: median_max(p["load_forward_s"]),
        ),
        (f"Load alone per actor, median (max), {actors} actors", lambda p: median_max(p["load_s"])),
        (
            f"Extra physical memory for {actors} actors / weight bytes: after load, after first forward",
            lambda p: f"{_loaded_ratio(p):.2f}, {_ratio(p):.2f}",
        ),
        (
            "Driver step (wrap, put or save) on the store written over once at start-up: time, "
            "peak extra driver memory / weights (the fresh-start figure below is the one the targets use)",
            lambda p: f"{seconds(p['prepare_s'])}, {_driver_peak(p):.2f}",
        ),
    ]
    for title, render in figures:
        rows = []
        for name in methods:
            cells = [
                _cell(_one(base, method=name, size_mib=size, actors=actors) or _first_error(base, name, size), render)
                for size in sizes
            ]
            rows.append([_label(name), *cells])
        out.append(f"### {title}\n\n" + table(headers, rows))
    return out


def _first_error(points: list[Point], name: str, size: int) -> Point | None:
    errors = [p for p in _select(points, method=name, size_mib=size) if p.get("error")]
    return errors[0] if errors else None


def actor_tables(points: list[Point], size: int, counts: list[int], methods: list[str]) -> list[str]:
    """Load, load + forward and memory against the number of actors."""
    base = _base_points(points)
    headers = ["method"] + [f"{n} actor{'s' if n > 1 else ''}" for n in counts]
    out = []
    for title, render in (
        (f"Load + first forward vs actor count, {size} MiB, median (max)", lambda p: median_max(p["load_forward_s"])),
        (f"Load alone per actor vs actor count, {size} MiB, median (max)", lambda p: median_max(p["load_s"])),
        (
            f"Extra memory / weights vs actor count, {size} MiB: after load, after first forward",
            lambda p: f"{_loaded_ratio(p):.2f}, {_ratio(p):.2f}",
        ),
    ):
        rows = [
            [_label(n), *[_cell(_one(base, method=n, size_mib=size, actors=c), render) for c in counts]]
            for n in methods
        ]
        out.append(f"### {title}\n\n" + table(headers, rows))
    return out


def point_rows(points: list[Point]) -> list[list[str]]:
    """One row per point: model, method, load + forward, load, memory, driver, checks."""
    rows = []
    for p in points:
        spec_label = f"{p['spec']['size_mib']} MiB {p['spec']['dtype']}" + (" tied" if p["spec"]["tied"] else "")
        if p.get("error"):
            rows.append([spec_label, _label(p["method"]), p["error"], "", "", "", "", ""])
            continue
        if METHODS[p["method"]].floor:  # placeholder weights: only its load time means something
            rows.append([spec_label, _label(p["method"]), "n/a", median_max(p["load_s"]), "n/a", "", "n/a", ""])
            continue
        rows.append(
            [
                spec_label,
                _label(p["method"]),
                median_max(p["load_forward_s"]),
                median_max(p["load_s"]),
                f"{_loaded_ratio(p):.2f}, {_ratio(p):.2f}",
                seconds(p["prepare_s"]),
                "yes" if p["outputs_equal"] else f"no (max diff {p['max_abs_diff']:.2g})",
                f"{min(p['shared_fraction']):.0%}",
            ]
        )
    return rows


def fresh_table(points: list[Point], memcpy: float | None) -> str:
    """The driver step of every method from a fresh start (new Ray, untouched store, new file)."""
    fresh = [p for p in points if p["figure"] == "fresh"]
    rows = []
    for p in fresh:
        if p.get("error"):
            rows.append([_label(p["method"]), "failed", "", ""])
            continue
        per_copy = f"{p['prepare_s'] / memcpy:.1f} x" if memcpy else "-"
        rows.append([_label(p["method"]), seconds(p["prepare_s"]), per_copy, f"{_driver_peak(p):.2f}"])
    size = fresh[0]["spec"]["size_mib"] if fresh else "-"
    return (
        f"### Driver step from a fresh start, {size} MiB: a new Ray whose store nothing has written yet, a new file\n\n"
        + table(["method", "time", "time / one memcpy of the weights", "peak extra driver memory / weights"], rows)
    )


POINT_HEADERS = [
    "model",
    "method",
    "load + first forward, median (max)",
    "load alone",
    "memory / weights (load, forward)",
    "driver step",
    "outputs equal",
    "weights in the object store or /dev/shm",
]


def task_table(task: list[dict[str, Any]]) -> str:
    """Task-mode latency per call."""
    rows = [
        [
            f"{t['size_mib']} MiB",
            t.get("call", "forward"),
            seconds(t["local_s"]),
            seconds(t["bare_task_s"]),
            seconds(t["zerocopy_s"]),
            f"{t['overhead_s'] * 1e3:+.1f} ms",
        ]
        for t in task
    ]
    headers = [
        "model",
        "call",
        "local call (1 thread)",
        "bare Ray task",
        "TaskWrapper call (warm)",
        "overhead beyond both",
    ]
    return "### Task mode: per-call latency, median of 30 interleaved calls\n\n" + table(headers, rows)


def data_table(data: list[dict[str, Any]]) -> str:
    """Ray Data map_batches with an actor pool."""
    rows = [
        [
            _label(d["method"]),
            f"{d['size_mib']} MiB",
            d["rows"],
            d["pool"],
            seconds(d["first_batch_s"]),
            seconds(d["total_s"]),
        ]
        for d in data
    ]
    headers = ["method", "model", "rows", "actor pool", "time to first batch", "total time"]
    return "### Ray Data `map_batches` with an actor pool\n\n" + table(headers, rows)


#: The verdicts of a target. A point that was not run (or an alternative that failed) leaves
#: a target "not measured", never "met"; ray-zerocopy's own point failing, giving other
#: outputs than the model or holding a weight outside shared memory makes it "not met".
MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"
#: ray-zerocopy's own methods, whose points must also be right (outputs, sharing) to count.
OURS = ("zerocopy", "jit_zerocopy", "export_zerocopy")


def _find(points: Iterable[Point], **where: Any) -> Point | None:
    """The point matching ``where``: one that succeeded if any, else a failed one, else None."""
    found = _select(points, **where)
    return next((p for p in found if not p.get("error")), found[0] if found else None)


def _problem(point: Point | None, what: str) -> tuple[str, str] | None:
    """Why ``point`` (``what`` names it) cannot count towards a target: (verdict, reason); None if it can."""
    if point is None:
        return NOT_MEASURED, f"{what}: not run"
    ours = point["method"] in OURS
    if point.get("error"):
        return (NOT_MET if ours else NOT_MEASURED), f"{what}: failed ({point['error']})"
    if ours and point["actors"]:
        if not point["outputs_equal"]:
            return NOT_MET, f"{what}: outputs differ from the model's (max diff {point['max_abs_diff']:.2g})"
        shared = min(point["shared_fraction"], default=0.0)
        if shared < 1.0:
            return NOT_MET, f"{what}: {shared:.0%} of the weights in shared memory in some actor"
    return None


def _combine(verdicts: Iterable[str]) -> str:
    """One verdict from several: any "not met" wins, then any "not measured"; none at all is "not measured"."""
    seen = set(verdicts)
    if NOT_MET in seen:
        return NOT_MET
    return MET if seen == {MET} else NOT_MEASURED


def _judged(ok: bool) -> str:
    return MET if ok else NOT_MET


def _best_alternative(base: list[Point], size: int, actors: int, key: str) -> tuple[str, float | None]:
    """The fastest zero-copy alternative at ``size``: (name, median seconds), or (why not known, None).

    Unknown when any alternative was not run or failed: the fastest might be the missing one.
    An alternative whose error starts with "n/a" does not apply to this model and is left out.
    """
    candidates = []
    for name in ZERO_COPY_ALTERNATIVES:
        point = _find(base, method=name, size_mib=size, actors=actors)
        if point is not None and str(point.get("error", "")).startswith("n/a"):
            continue
        problem = _problem(point, f"{size} MiB {name}")
        if problem is not None:
            return f"{problem[1]}, so the best alternative is unknown", None
        assert point is not None
        candidates.append((statistics.median(point[key]), name))
    if not candidates:
        return f"{size} MiB: no zero-copy alternative applies", None
    value, name = min(candidates)
    return name, value


def _memcpy(results: dict[str, Any], size: int) -> float | None:
    """Seconds of one memcpy of the ``size`` MiB model's weights, measured in this run."""
    memcpy = results.get("memcpy_s", {})
    return memcpy.get(str(size)) or memcpy.get(size)


def _forward_growth_per_actor(point: Point) -> float:
    """Private bytes each actor added in its first forward (after load -> after forward)."""
    return (point["extra_bytes"] - point["extra_bytes_loaded"]) / point["actors"]


def _ratio_rows(base: list[Point], sizes: list[int], actors: int) -> list[list[str]]:
    """Load + first forward and load alone against the best zero-copy alternative, at every size."""
    rows = []
    for key, title, limit in (
        ("load_forward_s", "load + first forward <= best zero-copy alternative", 1.0),
        ("load_s", "load alone, per actor <= 0.5 x best zero-copy alternative", 0.5),
    ):
        parts, verdicts = [], []
        for size in sizes:
            zc = _find(base, method="zerocopy", size_mib=size, actors=actors)
            problem = _problem(zc, f"{size} MiB ray-zerocopy")
            best, value = _best_alternative(base, size, actors, key)
            if problem is not None:
                verdicts.append(problem[0])
                parts.append(problem[1])
            elif value is None:
                verdicts.append(NOT_MEASURED)
                parts.append(best)
            else:
                assert zc is not None
                ours = statistics.median(zc[key])
                verdicts.append(_judged(ours / value <= limit))
                parts.append(f"{size} MiB: {ours / value:.2f} ({seconds(ours)} vs {seconds(value)} {best})")
        rows.append([title, "; ".join(parts) or "-", _combine(verdicts)])
    return rows


def _flat_row(base: list[Point], sizes: list[int], actors: int) -> list[str]:
    """Load alone flat in model size: the slowest median over the fastest, every size run."""
    title = f"load flat in size ({min(sizes, default=0)}-{max(sizes, default=0)} MiB): slowest / fastest median <= 2"
    loads, problems = [], []
    for size in sizes:
        zc = _find(base, method="zerocopy", size_mib=size, actors=actors)
        problem = _problem(zc, f"{size} MiB ray-zerocopy")
        if problem is None:
            assert zc is not None
            loads.append(statistics.median(zc["load_s"]))
        else:
            problems.append(problem)
    if problems:
        return [title, "; ".join(reason for _, reason in problems), _combine(v for v, _ in problems)]
    if len(loads) < 2:
        return [title, "needs two sizes or more", NOT_MEASURED]
    spread = max(loads) / min(loads)
    return [title, f"{spread:.2f} ({', '.join(seconds(v) for v in loads)})", _judged(spread <= 2.0)]


def _memory_row(points: list[Point], args: dict[str, Any]) -> list[str]:
    """Extra memory after the first forward, the worst point; every size, actor count and a tied point."""
    title = "extra memory for N actors <= 1.02 x weights, tied included (after the first forward)"
    base = _base_points(points)
    sweep, load_actors = args["sweep_size"], args["load_actors"]
    required = [(size, load_actors) for size in args["size"]] + [(sweep, n) for n in args["actors"]]
    reasons = [
        (NOT_MEASURED, f"{size} MiB float32, {n} actors: not run")
        for size, n in required
        if _find(base, method="zerocopy", size_mib=size, actors=n) is None
    ]
    ours = [p for p in points if p["method"] == "zerocopy" and p["actors"]]
    tied = [p for p in ours if p["spec"]["tied"]]
    if not tied:
        reasons.append((NOT_MEASURED, "no tied point was run"))
    for point in ours:
        where = f"{point['spec']['size_mib']} MiB {point['spec']['dtype']}{' tied' if point['spec']['tied'] else ''}"
        problem = _problem(point, f"{where}, {point['actors']} actors")
        if problem is not None:
            reasons.append(problem)
    if reasons:
        return [title, "; ".join(reason for _, reason in reasons), _combine(v for v, _ in reasons)]
    worst = max(ours, key=_ratio)
    measured = (
        f"after first forward: max {_ratio(worst):.3f} ({worst['spec']['size_mib']} MiB {worst['spec']['dtype']}, "
        f"{worst['actors']} actors), of which the first forwards added "
        f"{mib(_forward_growth_per_actor(worst))} per actor"
    )
    plain = _one(points, method="torch_load", size_mib=worst["spec"]["size_mib"], actors=worst["actors"])
    if plain and plain["spec"] == worst["spec"]:
        measured += f" (torch.load's forwards: {mib(_forward_growth_per_actor(plain))} per actor)"
    measured += f"; tied max {max(map(_ratio, tied)):.3f}; after load: max {max(map(_loaded_ratio, ours)):.3f}"
    return [title, measured, _judged(_ratio(worst) <= 1.02)]


def _driver_rows(results: dict[str, Any]) -> list[list[str]]:
    """The driver wrap of 1 GiB from a fresh start: its time (an absolute budget) and peak memory."""
    titles = (
        "driver wrap of 1 GiB <= 1.0 s (an absolute budget), fresh store",
        "peak extra driver memory while wrapping <= 1.1 x weights, fresh store",
    )
    fresh = _find(results.get("points", []), figure="fresh", method="zerocopy")
    problem = _problem(fresh, "ray-zerocopy's driver step from a fresh start")
    if problem is None and fresh is not None and fresh["spec"]["size_mib"] < 1024:
        problem = NOT_MEASURED, f"no 1 GiB point (largest size run: {fresh['spec']['size_mib']} MiB)"
    if problem is not None:
        return [[title, problem[1], problem[0]] for title in titles]
    assert fresh is not None
    memcpy = _memcpy(results, fresh["spec"]["size_mib"])
    copies = f" = {fresh['prepare_s'] / memcpy:.1f} x one memcpy of the weights" if memcpy else ""
    private = fresh["prepare_peak_private"] / fresh["weight_bytes"]
    return [
        [titles[0], f"{seconds(fresh['prepare_s'])}{copies}", _judged(fresh["prepare_s"] <= 1.0)],
        [
            titles[1],
            f"{_driver_peak(fresh):.2f} x = peak private growth {private:.2f} x + the stored copy",
            _judged(_driver_peak(fresh) <= 1.1),
        ],
    ]


def _task_row(results: dict[str, Any]) -> list[str]:
    """Task mode: the per-call overhead of an embedding lookup at every size measured."""
    title = (
        "task mode: per call <= local call + bare Ray task (both measured in this run) + 2 ms "
        "(an absolute budget), flat in size (verdict: embedding lookup)"
    )
    task = results.get("task") or []
    lookups = [t for t in task if t.get("call") == "embedding lookup"]
    sizes = results["args"].get("task_sizes") or sorted({t["size_mib"] for t in task})
    missing = [size for size in sizes if size not in {t["size_mib"] for t in lookups}]
    if not task or missing:
        return [title, f"no embedding lookup measured at {missing or sizes} MiB", NOT_MEASURED]
    measured = "embedding lookup: " + ", ".join(f"{t['size_mib']} MiB {t['overhead_s'] * 1e3:+.1f} ms" for t in lookups)
    forwards = [t for t in task if t.get("call", "forward") == "forward"]
    if forwards:
        measured += "; full forward (its own time is noisier): " + ", ".join(
            f"{t['size_mib']} MiB {t['overhead_s'] * 1e3:+.1f} ms" for t in forwards
        )
    return [title, measured, _judged(max(t["overhead_s"] for t in lookups) <= 0.002)]


def target_rows(results: dict[str, Any]) -> list[list[str]]:
    """The performance targets of docs/design.md: target, measured, verdict; one row per target, always."""
    points = results.get("points", [])
    args = results["args"]
    base = _base_points(points)
    rows = _ratio_rows(base, args["size"], args["load_actors"])
    rows.append(_flat_row(base, args["size"], args["load_actors"]))
    rows.append(_memory_row(points, args))
    rows += _driver_rows(results)
    rows.append(_task_row(results))
    return rows + code_target_rows(points, args)


def code_target_rows(points: list[Point], args: dict[str, Any]) -> list[list[str]]:
    """TorchScript and torch.export targets, each against what the same run measured."""
    where = f"{args['sweep_size']} MiB, {args['load_actors']} actors"
    rows: list[list[str]] = []
    for figure, kind, ours_name, other_name, load_target, memory_target in (
        (
            "jit",
            "TorchScript",
            "jit_zerocopy",
            "jit_skeleton_load",
            "load <= torch.jit.load of the weightless archive (this run) + 10 ms",
            "memory <= 1.05 x after the first forward",
        ),
        (
            "export",
            "torch.export",
            "export_zerocopy",
            "export_load",
            "load + first forward <= 0.1 x torch.export.load",
            "memory <= 1.05 x after first forward",
        ),
    ):
        ours = _find(points, figure=figure, method=ours_name)
        other = _find(points, figure=figure, method=other_name)
        problem = _problem(ours, f"{kind} ray-zerocopy") or _problem(other, f"{kind} {other_name}")
        if problem is not None:
            rows.append([f"{kind} {where}: {load_target}", problem[1], problem[0]])
        elif figure == "jit":
            assert ours is not None and other is not None
            load, floor_load = statistics.median(ours["load_s"]), statistics.median(other["load_s"])
            rows.append(
                [
                    f"{kind} {where}: {load_target}",
                    f"{seconds(load)} vs {seconds(floor_load)}: +{(load - floor_load) * 1e3:.1f} ms",
                    _judged(load <= floor_load + 0.010),
                ]
            )
        else:
            assert ours is not None and other is not None
            ours_lf, base_lf = statistics.median(ours["load_forward_s"]), statistics.median(other["load_forward_s"])
            rows.append(
                [
                    f"{kind} {where}: {load_target}",
                    f"{seconds(ours_lf)} vs {seconds(base_lf)} = {ours_lf / base_lf:.3f} x",
                    _judged(ours_lf <= 0.1 * base_lf),
                ]
            )
        problem = _problem(ours, f"{kind} ray-zerocopy")
        if problem is not None:
            rows.append([f"{kind} {where}: {memory_target}", problem[1], problem[0]])
        else:
            assert ours is not None
            after_load = f" (after load {_loaded_ratio(ours):.3f})" if figure == "jit" else ""
            rows.append(
                [f"{kind} {where}: {memory_target}", f"{_ratio(ours):.3f}{after_load}", _judged(_ratio(ours) <= 1.05)]
            )
    return rows


def machine_lines(machine: dict[str, Any], elapsed: float | None) -> str:
    """The run's date, machine and versions as a bullet list."""
    lines = [
        f"- date: {machine['date']}",
        f"- machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory_gib']} GiB memory",
        f"- platform: {machine['platform']}",
        f"- versions: Python {machine['python']}, torch {machine['torch']}, ray {machine['ray']}, "
        f"ray-zerocopy {machine['ray_zerocopy']}",
    ]
    if elapsed:
        lines.append(f"- run time: {elapsed / 60:.1f} min")
    return "\n".join(lines)


def render_results(results: dict[str, Any], out: Path, plot_prefix: str = "") -> str:
    """All tables as markdown; writes the plots into ``out``."""
    args = results["args"]
    points = results.get("points", [])
    methods = [m for m in args["methods"] if m in EAGER_METHODS]
    sections = [
        "## Machine\n\n" + machine_lines(results["machine"], results.get("elapsed_s")),
        "## Targets (docs/design.md), checked against this run\n\n"
        + table(["target", "measured", "verdict"], target_rows(results)),
    ]
    models = results.get("models", {})
    if models:
        sections.append(
            "## Models\n\n"
            + table(
                ["model", "weight bytes", "tensors"],
                [[k, mib(v["weight_bytes"]), v["tensors"]] for k, v in models.items()],
            )
        )
    sections.append(
        "## Against model size\n\n"
        + "\n\n".join(
            [
                *size_tables(points, args["size"], args["load_actors"], methods),
                fresh_table(points, _memcpy(results, max(args["size"]))),
            ]
        )
    )
    counts = sorted(set(args["actors"]) | ({args["load_actors"]} if args["sweep_size"] in args["size"] else set()))
    sections.append(
        "## Against actor count\n\n" + "\n\n".join(actor_tables(points, args["sweep_size"], counts, methods))
    )
    variants = [p for p in points if p["figure"] == "variants"]
    if variants:
        sections.append("## Variants: tied weights, bfloat16\n\n" + table(POINT_HEADERS, point_rows(variants)))
    jit = [p for p in points if p["figure"] == "jit"]
    if jit:
        sections.append("## TorchScript (traced)\n\n" + table(POINT_HEADERS, point_rows(jit)))
    exported = [p for p in points if p["figure"] == "export"]
    if exported:
        sections.append("## torch.export (ExportedProgram)\n\n" + table(POINT_HEADERS, point_rows(exported)))
    checks = _select(points, figure="size") + _select(points, figure="actors")
    if checks:
        sections.append(
            "## Every size and actor-count point: outputs and where the weights live\n\n"
            + table(POINT_HEADERS, point_rows(checks))
        )
    if results.get("task"):
        sections.append(task_table(results["task"]))
    if results.get("data"):
        sections.append(data_table(results["data"]))
    sections.append("## How memory is measured\n\n" + MEMORY_METHOD)
    sections.append(
        "## Plots\n\n" + "\n".join(f"![{name}]({plot_prefix}{name}.png)" for name in write_plots(results, out))
    )
    return "# ray-zerocopy benchmark results\n\n" + "\n\n".join(sections) + "\n"


def write_plots(results: dict[str, Any], out: Path) -> list[str]:
    """load_forward_vs_size, load_vs_size, memory_vs_actors, load_vs_actors (PNG); their names."""
    args = results["args"]
    base = [p for p in _base_points(results.get("points", [])) if not p.get("error")]
    methods = [m for m in args["methods"] if m in EAGER_METHODS]
    by_size = [p for p in base if p["actors"] == args["load_actors"]]
    by_actors = [p for p in base if p["spec"]["size_mib"] == args["sweep_size"]]
    figures = (
        (
            "load_forward_vs_size",
            by_size,
            "size_mib",
            "load_forward_s",
            "Per-actor load + first forward vs model size",
            "model size (MiB)",
            True,
        ),
        ("load_vs_size", by_size, "size_mib", "load_s", "Per-actor load alone vs model size", "model size (MiB)", True),
        ("memory_vs_actors", by_actors, "actors", None, "Extra memory / weights vs actors", "actors", False),
        ("load_vs_actors", by_actors, "actors", "load_s", "Per-actor load vs actors", "actors", True),
    )
    for name, chosen, x_key, y_key, title, xlabel, logy in figures:
        series = {}
        for method in methods:
            series[_label(method)] = [
                ({**p["spec"], **p}[x_key], statistics.median(p[y_key]) if y_key else _ratio(p))
                for p in _select(chosen, method=method)
            ]
        detail = f"{args['load_actors']} actors" if x_key == "size_mib" else f"{args['sweep_size']} MiB"
        ylabel = "seconds (median)" if y_key else "extra memory / weight bytes (after forward)"
        plot_lines(out / f"{name}.png", f"{title} ({detail})", xlabel, ylabel, series, logy=logy)
    return [figure[0] for figure in figures]
