"""A Ray cluster on a :class:`benchkit.netns.NamespaceNetwork`: one Ray node per host namespace.

The head runs ``ray start --head`` in the head's namespace; every other host joins it.
Each node has its own ``--temp-dir`` (Ray's sockets would collide in one), its own
``--node-ip-address`` and a small object store; all use the same authentication
setting (``RAY_AUTH_MODE=disabled``: a sandboxed test network). Ray is stopped by
killing the processes inside the namespaces by pid, never with ``ray stop``, which
would stop every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit.netns import Host, NamespaceNetwork, kill_namespace_processes
from benchkit.probe import BENCHMARKS_DIR

MIB = 1024**2
#: The head's GCS port and every raylet's port (each namespace has its own ports).
GCS_PORT = 6379
RAYLET_PORT = 6380


class RayStartError(RuntimeError):
    """``ray start`` failed on a host; the message names the host and has Ray's output."""


def ray_environment() -> dict[str, str]:
    """The environment of every Ray process: benchkit importable, no auth, no usage stats."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCHMARKS_DIR), env.get("PYTHONPATH")]))
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    return env


class RayOnNetwork:
    """Ray started on every host of ``network``; :meth:`stop` kills it by pid, a context manager."""

    def __init__(self, network: NamespaceNetwork, object_store_mib: int, node_cpus: int = 1) -> None:
        self.network = network
        self.object_store_mib = object_store_mib
        self.node_cpus = node_cpus
        self.temp_root = Path(tempfile.mkdtemp(prefix=f"{network.tag}-", dir="/tmp"))

    @property
    def address(self) -> str:
        """The GCS address nodes and the driver connect to."""
        return f"{self.network.head.address}:{GCS_PORT}"

    def _start_command(self, host: Host, head: bool) -> list[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        argv = [ray, "start", "--node-ip-address", host.address, "--node-manager-port", str(RAYLET_PORT)]
        argv += ["--temp-dir", str(self.temp_root / host.name), "--disable-usage-stats"]
        argv += ["--include-log-monitor", "false"]  # the driver does not print workers' logs
        argv += ["--object-store-memory", str(self.object_store_mib * MIB)]
        if head:
            # The head runs only the driver: no CPUs, so no actor is placed there by accident.
            argv += ["--head", "--port", str(GCS_PORT), "--num-cpus", "0", "--include-dashboard", "false"]
        else:
            argv += ["--address", self.address, "--num-cpus", str(self.node_cpus)]
        return self.network.command(host, argv)

    def start(self, parallel: int = 2, attempts: int = 3) -> None:
        """Start the head, then the other nodes ``parallel`` at a time; raise :class:`RayStartError`.

        ``ray start`` gives a raylet 30 s to register with the head; on a busy two-core
        machine several starting at once can miss that, so a node that fails is
        stopped (its namespace's processes killed) and started again, ``attempts`` times.
        """
        env = ray_environment()
        self._start_with_retries([self.network.head], True, env, attempts)
        nodes = self.network.nodes
        for first in range(0, len(nodes), parallel):
            self._start_with_retries(nodes[first : first + parallel], False, env, attempts)

    def _start_with_retries(self, hosts: list[Host], head: bool, env: dict[str, str], attempts: int) -> None:
        pending, errors = list(hosts), ""
        for _ in range(attempts):
            if not pending:
                return
            starts = [
                (
                    host,
                    subprocess.Popen(
                        self._start_command(host, head),
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                )
                for host in pending
            ]
            failed = []
            for host, process in starts:
                output, _ = process.communicate(timeout=300)
                if process.returncode != 0:
                    failed.append(host)
                    errors = f"{host.name}: {output.strip()[-1500:]}"
            if failed:
                kill_namespace_processes([host.namespace for host in failed])
            pending = failed
        if pending:
            names = ", ".join(host.name for host in pending)
            raise RayStartError(f"`ray start` failed {attempts} times on {names}; last output of {errors}")

    def driver(self, argv: list[str]) -> list[str]:
        """``argv`` as a command run in the head's namespace with Ray's environment."""
        return self.network.command(self.network.head, argv)

    def stop(self) -> int:
        """Kill every process in the hosts' namespaces (pids), remove the temp dirs; how many."""
        killed = self.network.stop_processes()
        shutil.rmtree(self.temp_root, ignore_errors=True)
        return killed

    def __enter__(self) -> RayOnNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
