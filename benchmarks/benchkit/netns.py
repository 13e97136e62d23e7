"""A small test network on one machine: K+1 hosts, each a network namespace on one bridge.

Used by ``benchmarks/cluster.py`` (needs root and iproute2's ``ip`` and ``tc``). Layout:

* a *switch* namespace holding a Linux bridge, so nothing is added to the machine's own
  network namespace;
* one namespace per host (``head``, ``n1`` ... ``nK``), each with loopback up and one
  veth pair: ``rzcb-eth`` inside the host (with its address, e.g. 10.213.7.1/24 for the
  head) and ``rzcb-<host>`` on the bridge;
* every link limited to one rate in both directions: a ``tbf`` qdisc on the egress of
  both ends of the veth (the host end limits what the host sends, the bridge end what
  it receives).

Everything is named ``rzcb-<pid>-...`` (the pid of the process that made it) and torn
down by :meth:`NamespaceNetwork.destroy`: the processes left in each host namespace are
killed by pid, then the namespaces are deleted, which removes their veths, the bridge
and the tc rules with them. :func:`remove_stale` cleans up after a run that was killed
before it could (``kill -9``): namespaces and Ray's temp dirs whose owner pid is gone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Prefix of every namespace and interface the benchmark creates.
PREFIX = "rzcb-"
#: Default private test subnet (/24); the head is .1, node i is .(i + 1).
DEFAULT_SUBNET = "10.213.7"
#: The veth end inside every host namespace.
HOST_INTERFACE = "rzcb-eth"
BRIDGE = "rzcb-br"


class NetworkSetupError(RuntimeError):
    """An ``ip``/``tc`` command failed; the message has the command and its output."""


@dataclass(frozen=True)
class Host:
    """One simulated machine: its namespace, its address and its bridge-side veth name."""

    name: str
    namespace: str
    address: str
    bridge_port: str


def run_command(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing output; on failure (``check``) raise with what it printed."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkSetupError(
            f"`{' '.join(argv)}` failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
        )
    return result


def missing_requirements() -> list[str]:
    """Why this machine cannot build the network (not root, no ``ip``/``tc``); empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it must run as root (it creates network namespaces, veths, a bridge and tc rules)")
    for tool in ("ip", "tc"):
        if run_command(["which", tool], check=False).returncode != 0:
            problems.append(f"`{tool}` (iproute2) is not installed")
    return problems


def namespace_pids(namespace: str) -> list[int]:
    """The pids of every process inside ``namespace`` (``ip netns pids``)."""
    result = run_command(["ip", "netns", "pids", namespace], check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def kill_namespace_processes(namespaces: Sequence[str], grace_s: float = 5.0) -> int:
    """SIGTERM every process in ``namespaces``, SIGKILL those left after ``grace_s``; the count."""
    pids = [pid for namespace in namespaces for pid in namespace_pids(namespace)]
    _signal_all(namespaces, signal.SIGTERM)
    if not _wait_empty(namespaces, grace_s):
        _signal_all(namespaces, signal.SIGKILL)
        _wait_empty(namespaces, grace_s)
    return len(pids)


def _signal_all(namespaces: Sequence[str], sig: signal.Signals) -> None:
    for namespace in namespaces:
        for pid in namespace_pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _wait_empty(namespaces: Sequence[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(namespace_pids(namespace) for namespace in namespaces):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def our_namespaces() -> list[str]:
    """Every network namespace whose name starts with :data:`PREFIX`."""
    result = run_command(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    return [name for name in names if name.startswith(PREFIX)]


def remove_namespace(namespace: str) -> None:
    """Kill what runs in ``namespace``, then delete it (its interfaces go with it)."""
    kill_namespace_processes([namespace])
    run_command(["ip", "netns", "delete", namespace], check=False)


def remove_stale() -> list[str]:
    """Delete what runs whose process is gone left (``rzcb-<pid>-...``): namespaces and /tmp dirs."""
    removed = []
    for namespace in our_namespaces():
        if _owner_gone(namespace):
            remove_namespace(namespace)
            removed.append(namespace)
    for path in Path("/tmp").glob(f"{PREFIX}*-*"):
        if path.is_dir() and _owner_gone(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


def _owner_gone(name: str) -> bool:
    owner = name[len(PREFIX) :].split("-", 1)[0]
    return owner.isdigit() and not _alive(int(owner))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def subnet_in_use(subnet: str) -> bool:
    """Whether the machine's own routing table already has an address in ``subnet``.0/24."""
    routes = run_command(["ip", "route", "show"], check=False).stdout
    return any(word.startswith(subnet + ".") for word in routes.split())


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP until the block ends (a second Ctrl-C cannot cut a teardown short)."""
    blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


@contextlib.contextmanager
def exit_on_signals() -> Iterator[None]:
    """Turn SIGINT, SIGTERM and SIGHUP into ``SystemExit`` so that ``finally`` blocks tear down.

    SIGINT is set too because a process started in the background by a shell inherits
    it ignored, and Ctrl-C or ``kill -INT`` must still tear the network down.
    """

    def stop(signum: int, frame: Any) -> None:
        print(f"signal {signum}: tearing the test network down", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class NamespaceNetwork:
    """``nodes`` + 1 hosts on a bridge, each link limited to ``rate_mbit`` both ways; a context manager."""

    def __init__(self, nodes: int, rate_mbit: float, subnet: str = DEFAULT_SUBNET) -> None:
        if not 1 <= nodes <= 250:
            raise ValueError(f"nodes must be 1..250, not {nodes}")
        self.rate_mbit = rate_mbit
        self.subnet = subnet
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        names = ["head"] + [f"n{i}" for i in range(1, nodes + 1)]
        self.hosts = [
            Host(name, f"{self.tag}-{name}", f"{subnet}.{index + 1}", f"{PREFIX}{name}")
            for index, name in enumerate(names)
        ]
        self._created: list[str] = []

    @property
    def head(self) -> Host:
        """The host the Ray head and the driver run in."""
        return self.hosts[0]

    @property
    def nodes(self) -> list[Host]:
        """The hosts of the K worker nodes (the head excluded)."""
        return self.hosts[1:]

    def __enter__(self) -> NamespaceNetwork:
        try:
            self.create()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def _ip(self, namespace: str, *args: str) -> None:
        run_command(["ip", "-n", namespace, *args])

    def _add_namespace(self, namespace: str) -> None:
        run_command(["ip", "netns", "add", namespace])
        self._created.append(namespace)
        self._ip(namespace, "link", "set", "lo", "up")

    def _limit(self, namespace: str, interface: str) -> None:
        # tbf: a bucket of ~4 ms at the rate (at least 64 KiB, so one GSO packet fits),
        # and at most 50 ms of queue before packets are dropped (TCP backs off).
        bytes_per_s = self.rate_mbit * 1e6 / 8
        burst = max(64 * 1024, int(bytes_per_s * 0.004))
        rate = f"{self.rate_mbit}mbit"
        tbf = ["tbf", "rate", rate, "burst", str(burst), "latency", "50ms"]
        run_command(["tc", "-n", namespace, "qdisc", "add", "dev", interface, "root", *tbf])

    def create(self) -> None:
        """Make the namespaces, the bridge, one rate-limited veth pair per host."""
        if subnet_in_use(self.subnet):
            raise NetworkSetupError(
                f"{self.subnet}.0/24 is already routed on this machine (`ip route`); pick another with --subnet"
            )
        self._add_namespace(self.switch)
        self._ip(self.switch, "link", "add", BRIDGE, "type", "bridge")
        self._ip(self.switch, "link", "set", BRIDGE, "up")
        for host in self.hosts:
            self._add_namespace(host.namespace)
            self._ip(
                self.switch,
                "link",
                "add",
                host.bridge_port,
                "type",
                "veth",
                "peer",
                "name",
                HOST_INTERFACE,
                "netns",
                host.namespace,
            )
            self._ip(self.switch, "link", "set", host.bridge_port, "master", BRIDGE, "up")
            self._ip(host.namespace, "addr", "add", f"{host.address}/24", "dev", HOST_INTERFACE)
            self._ip(host.namespace, "link", "set", HOST_INTERFACE, "up")
            self._limit(host.namespace, HOST_INTERFACE)
            self._limit(self.switch, host.bridge_port)

    def destroy(self) -> list[str]:
        """Kill every process in the host namespaces, delete every namespace; what was left behind."""
        with signals_blocked():
            kill_namespace_processes(self._created)
            for namespace in reversed(self._created):
                remove_namespace(namespace)
            self._created.clear()
            return [name for name in our_namespaces() if name.startswith(self.tag + "-")]

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace (``ip netns exec``)."""
        return ["ip", "netns", "exec", host.namespace, *argv]

    def stop_processes(self) -> int:
        """Kill every process in every host namespace (Ray's included) by pid; how many there were."""
        with signals_blocked():
            return kill_namespace_processes([host.namespace for host in self.hosts])

    def measure_rate(self, seconds: float = 2.0) -> float:
        """TCP throughput from the head to node 1, counted by the receiver, in Mbit/s (checks the limit)."""
        receiver = self.nodes[0]
        server = subprocess.Popen(
            self.command(receiver, ["python3", "-c", _SINK, receiver.address, str(seconds)]),
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            server.stdout.readline()  # "ready"
            run_command(self.command(self.head, ["python3", "-c", _SOURCE, receiver.address]))
            output, _ = server.communicate(timeout=seconds + 30)
            return float(output.strip())
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


#: Accepts one connection on port 5201, reads for argv[2] seconds, prints the Mbit/s it
#: received after the first quarter of that time (TCP's ramp-up left out), then closes.
_SINK = """
import socket, sys, time
s = socket.create_server((sys.argv[1], 5201))
print("ready", flush=True)
c, _ = s.accept()
start = time.monotonic()
warm, end = start + float(sys.argv[2]) / 4, start + float(sys.argv[2])
total, counted = 0, None
while time.monotonic() < end:
    n = len(c.recv(1 << 20))
    if counted is None and time.monotonic() >= warm:
        counted, total = time.monotonic(), 0
    total += n
print(total * 8 / (time.monotonic() - counted) / 1e6, flush=True)
c.close()
"""

#: Sends until the receiver closes the connection.
_SOURCE = """
import socket, sys
c = socket.create_connection((sys.argv[1], 5201))
block = bytes(1 << 16)
try:
    while True:
        c.sendall(block)
except OSError:
    pass
"""


def host_link_bytes(interface: str = HOST_INTERFACE) -> tuple[int, int]:
    """(sent, received) bytes of this process's namespace's ``interface`` (``/sys/class/net``).

    Read inside a host namespace (a process started by ``ip netns exec``, and its
    children, see that namespace's ``/sys``), these are the host's link counters.
    """
    base = f"/sys/class/net/{interface}/statistics"
    with open(f"{base}/tx_bytes") as tx, open(f"{base}/rx_bytes") as rx:
        return int(tx.read()), int(rx.read())
