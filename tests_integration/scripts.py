"""Running a Python script as its own process, as the example and docs tests do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import ray


def run_script(
    path: Path, *args: str, cwd: Path, timeout: float, label: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``path`` with this interpreter in its own process group; kill the group on timeout.

    ``RAY_ADDRESS=local`` makes the script start a private Ray even if another cluster runs
    on this machine (``ray.init()`` would otherwise connect to it and refuse ``num_cpus``).
    Output (stdout and stderr together) is in ``stdout`` of the result.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, str(path), *args],
        cwd=cwd,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the Ray processes it starts join its group
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{label} ran longer than {timeout} s:\n{out[-6000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def run_driver(path: Path, *args: str, timeout: float, label: str) -> str:
    """Run ``path`` as a second driver of the Ray cluster this test runs; return its output.

    The script finds the cluster through ``RAY_ADDRESS`` and runs next to the test modules
    (so it can import them); a non-zero exit fails the test with the script's output.
    """
    address = ray.get_runtime_context().gcs_address
    done = run_script(
        path, *args, cwd=Path(__file__).parent, timeout=timeout, label=label, env={"RAY_ADDRESS": address}
    )
    assert done.returncode == 0, f"{label} exited with {done.returncode}:\n{done.stdout[-6000:]}"
    return done.stdout


def run_driver_code(code: str, directory: Path, label: str, timeout: float) -> str:
    """Run ``code`` (dedented, between ``ray.init`` and ``ray.shutdown``) as a second driver; return its output.

    The script is written to ``directory`` as ``label``.py and run by :func:`run_driver`.
    """
    script = directory / f"{label}.py"
    header = "import ray\nray.init(logging_level='ERROR')\n"  # RAY_ADDRESS names the test's cluster
    script.write_text(header + textwrap.dedent(code) + "\nray.shutdown()\n")
    return run_driver(script, timeout=timeout, label=f"driver {label}")
