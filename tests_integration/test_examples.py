"""Run every script under ``examples/`` as its own process and fail if one breaks.

Each example starts (and shuts down) its own small local Ray, so these tests do not use
the ``ray_local`` fixture. A script counts as passing when it exits with status 0; the
examples check their own results with ``assert``.

The custom-backend example needs its plugin distribution installed. The ``integration``
nox session installs it; elsewhere the tests install it into a temporary folder put on
``PYTHONPATH`` for the example's process, never into the environment running them.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from environment import on_path
from scripts import run_script

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CUSTOM_BACKEND = EXAMPLES / "custom_backend"
PLUGIN_ENTRY_POINT = "embedding-table"
TIMEOUT_S = 300  # generous: the examples take ~20 s each, mostly Ray start-up, on 2 busy cores

SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py"))


def run_example(path: Path, *args: str, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run one example script from the repository root."""
    return run_script(path, *args, cwd=ROOT, timeout=timeout, label=path.name, env={"RAY_DEDUP_LOGS": "0"})


def check(result: subprocess.CompletedProcess[str], name: str) -> None:
    assert result.returncode == 0, f"{name} exited with {result.returncode}:\n{result.stdout[-6000:]}"


#: A line each example prints once it has checked its results.
EXPECTED_OUTPUT = {
    "quickstart.py": "actors answered the same as the local model",
    "ray_data_actor_pool.py": "labelled 200 rows",
    "checkpoint_data_pipeline.py": "labelled 96 rows from a checkpoint",
    "plain_actors.py": "actors agree with the local model",
    "quantized_actors.py": "3 quantized actors agree with the quantized model",
    "task_mode.py": "ran as Ray tasks",
    "multi_model_pipeline.py": "task mode: same labels",
    "torchscript_task_and_actor.py": "JITActorWrapper: 2 actors agree",
    "export_actor_pool.py": "3 actors labelled 33 rows from a .pt2",
    "gpu_placement.py": "the actor's model ran on",
    "serve_deployment.py": "8 requests answered",
    "serve_named_models.py": "named-model demo done",
    "serve_multiplexed.py": "answered correctly by",
    "cluster_named_models.py": "served from every node",
}


def test_every_example_is_listed() -> None:
    expected = set(EXPECTED_OUTPUT)
    assert expected <= set(SCRIPTS)
    assert set(SCRIPTS) <= set(EXPECTED_OUTPUT), "add the new example's success line to EXPECTED_OUTPUT"
    for name in SCRIPTS:
        source = (EXAMPLES / name).read_text()
        assert source.lstrip().startswith('"""'), f"{name} has no module docstring"
        assert "ray.shutdown()" in source, f"{name} does not shut Ray down"


@pytest.mark.parametrize("name", SCRIPTS)
def test_example_runs(name: str) -> None:
    result = run_example(EXAMPLES / name)
    check(result, name)
    assert name in EXPECTED_OUTPUT, f"add the success line {name} prints to EXPECTED_OUTPUT"
    assert EXPECTED_OUTPUT[name] in result.stdout, result.stdout[-6000:]
    if name == "gpu_placement.py" and not torch_has_cuda():
        assert "No CUDA GPU found: running on the CPU" in result.stdout


def torch_has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def embedding_plugin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The example plugin distribution installed (its entry point visible), here or in a temporary folder."""
    group = metadata.entry_points(group="ray_zerocopy.backends")
    if any(ep.name == PLUGIN_ENTRY_POINT for ep in group):
        yield
        return
    with on_path(CUSTOM_BACKEND, tmp_path_factory.mktemp("custom_backend")):
        yield


def test_custom_backend_example_runs(embedding_plugin: None) -> None:
    result = run_example(CUSTOM_BACKEND / "use_embedding_backend.py")
    check(result, "custom_backend/use_embedding_backend.py")
    assert "shared by the 'embedding-table' backend" in result.stdout


def test_custom_backend_plugin_tests_pass(embedding_plugin: None) -> None:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CUSTOM_BACKEND / "tests")]
    done = subprocess.run(command, cwd=CUSTOM_BACKEND, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
