"""The benchmark's verdicts (benchmarks/benchkit/targets.py) on hand-made result records, no benchmark run.

A target is "met" only when every point it needs was measured and right; a point not run
or an alternative that failed leaves it "not measured"; ray-zerocopy's own point failing,
giving other outputs or holding a weight outside shared memory makes it "NOT met". Every
target has a row, with data or without.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
MIB = 1024**2
ALTERNATIVES = ("ray_zero_copy_env", "safetensors_shm", "torch_load_mmap")
SIZES = [64, 1024]
#: The rows of a run, in order: each target's title starts with one of these.
TITLES = [
    "load + first forward <= best",
    "load alone, per actor <= 0.5 x",
    "load flat in size",
    "extra memory for N actors",
    "driver wrap of 1 GiB",
    "peak extra driver memory",
    "task mode: per call",
    "TorchScript 64 MiB, 4 actors: load",
    "TorchScript 64 MiB, 4 actors: memory",
    "torch.export 64 MiB, 4 actors: load + first forward",
    "torch.export 64 MiB, 4 actors: memory",
]

Point = dict[str, Any]


@pytest.fixture(scope="module")
def targets() -> ModuleType:
    """``benchkit.targets``, imported from the repository's benchmarks folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(BENCHMARKS))
        return importlib.import_module("benchkit.targets")


def point(
    method: str,
    size: int = 64,
    actors: int = 4,
    figure: str = "size",
    *,
    load: float = 0.010,
    load_forward: float = 0.050,
    memory: float = 1.01,
    error: str | None = None,
    **spec: Any,
) -> Point:
    """One measured point as ``benchkit.probe.LoadPoint.to_dict`` writes it (a failed one as ``failed_point``)."""
    weights = 0 if error else size * MIB
    return {
        "figure": figure,
        "method": method,
        "spec": {"size_mib": size, "dtype": "float32", "tied": False, "scripted": False, "exported": False, **spec},
        "actors": actors,
        "weight_bytes": weights,
        "prepare_s": 0.0 if error else 0.5,
        "prepare_peak_rss": 0,
        "prepare_peak_private": int(0.02 * weights),
        "load_s": [] if error else [load] * actors,
        "load_forward_s": [] if error else [load_forward] * actors,
        "extra_bytes": int(memory * weights),
        "extra_bytes_loaded": weights,
        "private_growth": {},
        "shm_files_growth": 0,
        "shmem_growth": 0,
        "store_growth": weights,
        "shared_fraction": [] if error else [1.0] * actors,
        "outputs_equal": not error,
        "max_abs_diff": 0.0,
        "error": error,
        "notes": [],
    }


def complete_run() -> dict[str, Any]:
    """A run in which every target is met: ray-zerocopy well inside every limit."""
    points = [point("zerocopy", 1024, 0, "fresh", memory=0.0) | {"prepare_s": 0.8}]
    for size in SIZES:
        points.append(point("zerocopy", size, load=0.005, load_forward=0.040))
        points += [point(name, size, load=0.012, load_forward=0.050) for name in ALTERNATIVES]
        points.append(point("torch_load", size, load=0.300, load_forward=0.400, memory=4.0))
    points.append(point("zerocopy", 64, 1, "actors", load=0.005, load_forward=0.040))
    points += [point(name, 64, 1, "actors", load=0.012) for name in ALTERNATIVES]
    points.append(point("zerocopy", 64, figure="variants", tied=True))
    points.append(point("zerocopy", 64, figure="variants", dtype="bfloat16"))
    points.append(point("jit_zerocopy", figure="jit", load=0.120, scripted=True))
    points.append(point("jit_skeleton_load", figure="jit", load=0.115, scripted=True))
    points.append(point("export_zerocopy", figure="export", load_forward=0.100, exported=True))
    points.append(point("export_load", figure="export", load_forward=1.500, exported=True))
    task = [
        {"size_mib": 64, "call": call, "local_s": 0.001, "bare_task_s": 0.002, "zerocopy_s": 0.004, "overhead_s": 0.001}
        for call in ("forward", "embedding lookup")
    ]
    return {
        "args": {
            "size": SIZES,
            "load_actors": 4,
            "actors": [1],
            "sweep_size": 64,
            "task_sizes": [64],
            "methods": ["zerocopy", "torch_load", *ALTERNATIVES],
        },
        "points": points,
        "task": task,
        "memcpy_s": {"1024": 0.3},
        "machine": {
            "date": "2026-12-03",
            "cores": 2,
            "cpu": "test",
            "memory_gib": 24,
            "platform": "linux",
            "python": "3.11",
            "torch": "2.13.0",
            "ray": "2.60.0",
            "ray_zerocopy": "1.0.0",
        },
    }


def verdicts(targets: ModuleType, results: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each target's (measured, verdict), by the start of its title in :data:`TITLES`."""
    rows = targets.target_rows(results)
    assert len(rows) == len(TITLES), [row[0] for row in rows]
    found = {}
    for title, (target, measured, verdict) in zip(TITLES, rows):
        assert target.startswith(title), (title, target)
        found[title] = (measured, verdict)
    return found


def changed(edit: Callable[[list[Point]], None]) -> dict[str, Any]:
    """The complete run with ``edit`` applied to its points."""
    results = copy.deepcopy(complete_run())
    edit(results["points"])
    return results


def replace(points: list[Point], new: Point) -> None:
    """Put ``new`` in place of the point of the same figure, method and spec."""
    for index, old in enumerate(points):
        if (old["figure"], old["method"], old["spec"], old["actors"]) == (
            new["figure"],
            new["method"],
            new["spec"],
            new["actors"],
        ):
            points[index] = new
            return
    raise AssertionError(f"no point like {new['method']} {new['spec']}")


def test_a_complete_run_meets_every_target(targets: ModuleType) -> None:
    found = verdicts(targets, complete_run())
    assert {title: verdict for title, (_, verdict) in found.items()} == dict.fromkeys(TITLES, "met")
    assert found["load alone, per actor <= 0.5 x"][0].startswith("64 MiB: 0.42 (5.0 ms vs 12.0 ms")


def test_a_failed_alternative_at_the_largest_size_leaves_the_ratios_not_measured(targets: ModuleType) -> None:
    """Neither dropped nor judged against the slower alternatives that did run."""
    results = changed(lambda points: replace(points, point("safetensors_shm", 1024, error="ObjectStoreFullError")))
    found = verdicts(targets, results)
    for title in TITLES[:2]:
        measured, verdict = found[title]
        assert verdict == "not measured", found[title]
        assert "1024 MiB safetensors_shm: failed (ObjectStoreFullError)" in measured
        assert "64 MiB: " in measured  # the size that ran is still shown
    assert found["extra memory for N actors"][1] == "met"  # alternatives play no part there


def test_ray_zerocopy_failing_at_one_size_is_not_met(targets: ModuleType) -> None:
    results = changed(lambda points: replace(points, point("zerocopy", 1024, error="RayTaskError: boom")))
    found = verdicts(targets, results)
    for title in (*TITLES[:4],):
        assert found[title][1] == "NOT met", (title, found[title])
        assert "1024 MiB" in found[title][0] and "boom" in found[title][0]


def test_a_size_not_run_is_not_measured(targets: ModuleType) -> None:
    def drop(points: list[Point]) -> None:
        points[:] = [p for p in points if not (p["method"] == "zerocopy" and p["spec"]["size_mib"] == 1024)]

    found = verdicts(targets, changed(drop))
    for title in (*TITLES[:6],):
        assert found[title][1] == "not measured", (title, found[title])
    assert found["extra memory for N actors"][0] == "1024 MiB float32, 4 actors: not run"


@pytest.mark.parametrize("fault", ["outputs differ", "a weight outside shared memory"])
def test_wrong_outputs_or_sharing_of_ray_zerocopy_are_not_met(targets: ModuleType, fault: str) -> None:
    def spoil(points: list[Point]) -> None:
        wrong = point("zerocopy", 64, load=0.005, load_forward=0.040)
        if fault == "outputs differ":
            wrong.update(outputs_equal=False, max_abs_diff=0.5)
        else:
            wrong["shared_fraction"] = [1.0, 1.0, 0.5, 1.0]
        replace(points, wrong)

    found = verdicts(targets, changed(spoil))
    expected = "outputs differ from the model's" if fault == "outputs differ" else "50% of the weights in shared memory"
    for title in (*TITLES[:4],):
        assert found[title][1] == "NOT met", (title, found[title])
        assert expected in found[title][0]


def test_the_memory_target_needs_a_tied_point(targets: ModuleType) -> None:
    results = changed(lambda points: points.remove(point("zerocopy", 64, figure="variants", tied=True)))
    assert verdicts(targets, results)["extra memory for N actors"] == ("no tied point was run", "not measured")


def test_the_memory_target_takes_the_worst_point_tied_included(targets: ModuleType) -> None:
    results = changed(lambda points: replace(points, point("zerocopy", 64, figure="variants", memory=1.3, tied=True)))
    measured, verdict = verdicts(targets, results)["extra memory for N actors"]
    assert verdict == "NOT met" and "max 1.300 (64 MiB float32, 4 actors)" in measured and "tied max 1.300" in measured


def test_every_target_has_a_row_without_data(targets: ModuleType) -> None:
    results = complete_run()
    results["points"], results["task"] = [], []
    found = verdicts(targets, results)
    assert {title: verdict for title, (_, verdict) in found.items()} == dict.fromkeys(TITLES, "not measured")


def test_the_driver_budget_needs_a_1_gib_point(targets: ModuleType) -> None:
    def smaller(points: list[Point]) -> None:
        points[0] = point("zerocopy", 64, 0, "fresh", memory=0.0)

    found = verdicts(targets, changed(smaller))
    for title in ("driver wrap of 1 GiB", "peak extra driver memory"):
        assert found[title] == ("no 1 GiB point (largest size run: 64 MiB)", "not measured")
    failed = verdicts(
        targets, changed(lambda points: points.__setitem__(0, point("zerocopy", 1024, 0, "fresh", error="x")))
    )
    assert failed["driver wrap of 1 GiB"][1] == "NOT met"


def test_task_mode_needs_every_size(targets: ModuleType) -> None:
    results = complete_run()
    results["args"]["task_sizes"] = [64, 256]
    assert verdicts(targets, results)["task mode: per call"] == (
        "no embedding lookup measured at [256] MiB",
        "not measured",
    )
    results["task"][1]["overhead_s"] = 0.003
    results["args"]["task_sizes"] = [64]
    assert verdicts(targets, results)["task mode: per call"][1] == "NOT met"


def test_torchscript_and_export_rows(targets: ModuleType) -> None:
    def no_floor_and_wrong_export(points: list[Point]) -> None:
        points[:] = [p for p in points if p["method"] != "jit_skeleton_load"]
        wrong = point("export_zerocopy", figure="export", load_forward=0.100, exported=True)
        wrong["outputs_equal"] = False
        replace(points, wrong)

    found = verdicts(targets, changed(no_floor_and_wrong_export))
    assert found["TorchScript 64 MiB, 4 actors: load"] == ("TorchScript jit_skeleton_load: not run", "not measured")
    assert found["TorchScript 64 MiB, 4 actors: memory"][1] == "met"  # needs no floor
    for title in TITLES[-2:]:
        assert found[title][1] == "NOT met" and "outputs differ" in found[title][0], found[title]


def test_the_results_page_renders_complete_and_failed_runs(targets: ModuleType, tmp_path: Path) -> None:
    """What run.py and docs_page.py write: the tables, the targets and the plots."""
    for name, results in (
        ("complete", complete_run()),
        ("failed", changed(lambda points: replace(points, point("zerocopy", 1024, error="RayTaskError: boom")))),
    ):
        page = targets.render_results(results, tmp_path / name)
        assert "## Targets (docs/design.md), checked against this run" in page
        assert (tmp_path / name / "load_vs_size.png").exists()
        if name == "failed":
            assert "| NOT met |" in page and "| met |" in page
