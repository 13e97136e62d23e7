"""Named shared models on a real local Ray: publish, load by name, races, faults, freeing.

Drivers that publish and exit, or that load from a second job, are separate Python
processes connected to this module's cluster (``ray.init(address=<GCS address>)``).
Object-store usage is read from the raylet's store statistics, as in ``test_faults.py``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import scripts
import torch
from environment import assert_stopped_by_a_weight_write, require, wait_until
from models import MIB, script
from object_store import store_bytes_used, wait_for_store
from torch import nn

import ray_zerocopy
from ray_zerocopy import get_or_publish, list_published, load_published, publish, unpublish
from ray_zerocopy.errors import ModelNotPublishedError
from ray_zerocopy_core.cluster.directory import holder_name
from ray_zerocopy_core.named import NAMESPACE, holder_private_memory

pytestmark = pytest.mark.usefixtures("ray_local", "one_thread")  # references on one thread, as in workers

SUBPROCESS_TIMEOUT_S = 180


def make_model(mib: int, seed: int = 0) -> nn.Module:
    """An MLP with about ``mib`` MiB of float32 weights, deterministic for ``seed``."""
    torch.manual_seed(seed)
    hidden = mib * MIB // (2 * 64 * 4)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 64)).eval()


INPUT = torch.linspace(-1, 1, 2 * 64).reshape(2, 64)


def expected_output(mib: int, seed: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return make_model(mib, seed)(INPUT)


class CountingLoader:
    """A loader that appends a line to ``path`` each time it runs (in whatever process)."""

    def __init__(self, path: str, mib: int, seed: int = 0) -> None:
        self.path = path
        self.mib = mib
        self.seed = seed

    def __call__(self) -> nn.Module:
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()}\n")
        return make_model(self.mib, self.seed)


def runs(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@ray.remote(num_cpus=0)
class User:
    """A worker that loads a published model by name and reports on it."""

    def __init__(self) -> None:
        self.model: Any = None

    def load(self, name: str) -> bool:
        self.model = load_published(name)
        return all(ray_zerocopy.aliases_object_store(p) for p in self.model.parameters())

    def get_or_publish(self, name: str, loader: CountingLoader) -> bool:
        self.model = get_or_publish(name, loader)
        return all(ray_zerocopy.aliases_object_store(p) for p in self.model.parameters())

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def drop(self) -> None:
        self.model = None

    def write_in_place(self) -> None:
        with torch.no_grad():
            next(self.model.parameters()).add_(1)

    def pid(self) -> int:
        return os.getpid()


@pytest.fixture
def cleanup() -> Iterator[list[str]]:
    """Names to unpublish after the test, whatever happened; then the store must drain.

    Ray frees objects asynchronously, so the store gets a generous minute; what is still
    held after it leaked, and fails the test that leaked it (not the next one's baseline).
    """
    names: list[str] = []
    before = store_bytes_used()
    yield names
    for name in names:
        unpublish(name, missing_ok=True)
    gc.collect()  # a test's frame may be kept in a cycle (pytest.raises) with a loaded model in it
    used = wait_for_store(lambda used: used <= before + MIB, timeout=60)
    assert used <= before + MIB, f"{(used - before) / MIB:.1f} MiB still in the object store after unpublishing {names}"


def run_driver(code: str, tmp_path: Path, label: str) -> str:
    """Run ``code`` as a second driver connected to this cluster; return its output."""
    return scripts.run_driver_code(code, tmp_path, label, timeout=SUBPROCESS_TIMEOUT_S)


def test_published_model_outlives_its_driver_and_loads_anywhere(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.append("outlives")
    run_driver(
        """
        from test_named import make_model
        from ray_zerocopy import publish
        print(publish("outlives", make_model(16)))
        """,
        tmp_path,
        "publisher",
    )  # the publishing driver has exited here
    [info] = [m for m in list_published() if m.name == "outlives"]
    assert info.version == 1 and dict(info.backends) == {"": "nn"} and info.built_by == "caller"
    assert info.nbytes >= 16 * MIB

    out = tmp_path / "second_driver_output.pt"
    stdout = run_driver(
        f"""
        import torch
        from ray_zerocopy import aliases_object_store, load_published
        from test_named import INPUT
        torch.set_num_threads(1)  # as the reference
        model = load_published("outlives")
        print("aliased", all(aliases_object_store(p) for p in model.parameters()))
        with torch.no_grad():
            torch.save(model(INPUT), {str(out)!r})
        """,
        tmp_path,
        "second_driver",
    )
    expected = expected_output(16)
    assert "aliased True" in stdout
    assert torch.equal(torch.load(out), expected)

    users = [User.remote() for _ in range(2)]
    assert ray.get([u.load.remote("outlives") for u in users]) == [True, True]
    for answer in ray.get([u.predict.remote(INPUT) for u in users]):
        assert torch.equal(answer, expected)

    local = load_published("outlives")  # and in this driver
    assert all(ray_zerocopy.aliases_object_store(p) for p in local.parameters())
    assert torch.equal(local(INPUT), expected)
    for user in users:
        ray.kill(user)


def test_loads_by_name_are_write_protected(cleanup: list[str]) -> None:
    cleanup.append("protected")
    publish("protected", make_model(4, seed=9))  # caller path: the holder re-stored the bytes
    writer, bystander = User.remote(), User.remote()
    assert ray.get([writer.load.remote("protected"), bystander.load.remote("protected")]) == [True, True]
    pid = ray.get(writer.pid.remote())
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(writer.write_in_place.remote(), timeout=120)  # stopped before a byte changed
    assert_stopped_by_a_weight_write(pid)
    expected = expected_output(4, seed=9)
    assert torch.equal(ray.get(bystander.predict.remote(INPUT)), expected)
    assert torch.equal(load_published("protected")(INPUT), expected)
    ray.kill(bystander)


def test_one_copy_after_publish_and_the_holder_keeps_no_private_copy(cleanup: list[str]) -> None:
    cleanup.extend(["one-copy", "built-in-holder"])
    baseline = wait_for_store(lambda used: True)
    info = publish("one-copy", make_model(64))
    used = wait_for_store(lambda used: used <= baseline + 1.2 * info.nbytes)
    assert baseline + info.nbytes <= used <= baseline + 1.2 * info.nbytes  # the caller's copy is gone

    publish("built-in-holder", lambda: make_model(1), holder="builder")
    small = holder_private_memory("builder")
    big = publish("built-in-holder", lambda: make_model(128, seed=3))  # republish: stays in its holder
    assert (big.version, big.built_by, big.holder) == (2, "loader", "builder")
    assert holder_private_memory("builder") - small < 0.25 * big.nbytes
    used = wait_for_store(lambda used: used <= baseline + 1.2 * (info.nbytes + big.nbytes))
    assert used <= baseline + 1.2 * (info.nbytes + big.nbytes)


def test_get_or_publish_from_eight_actors_runs_the_loader_once(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.append("crowd")
    log = tmp_path / "loader_runs.txt"
    baseline = wait_for_store(lambda used: True)
    users = [User.remote() for _ in range(8)]
    ray.get([u.drop.remote() for u in users])  # every actor is up, so the calls below race
    loader = CountingLoader(str(log), mib=32, seed=5)
    assert ray.get([u.get_or_publish.remote("crowd", loader) for u in users]) == [True] * 8
    assert runs(log) == 1
    expected = expected_output(32, seed=5)
    for answer in ray.get([u.predict.remote(INPUT) for u in users]):
        assert torch.equal(answer, expected)
    [info] = [m for m in list_published() if m.name == "crowd"]
    assert info.version == 1 and info.built_by == "loader"
    # One copy for eight users, once the build task's own transient copy is freed.
    used = wait_for_store(lambda used: used <= baseline + 1.2 * info.nbytes)
    assert baseline + info.nbytes <= used <= baseline + 1.2 * info.nbytes
    for user in users:
        ray.kill(user)


def test_killed_holders_are_a_clear_error_and_get_or_publish_recovers(tmp_path: Path, cleanup: list[str]) -> None:
    cleanup.extend(["fragile", "bystander"])
    log = tmp_path / "loader_runs.txt"
    loader = CountingLoader(str(log), mib=4, seed=7)
    publish("fragile", loader, holder="fragile-holder")
    publish("bystander", make_model(1))  # in the default holder group: not affected
    user = User.remote()
    assert ray.get(user.load.remote("fragile"))
    expected = expected_output(4, seed=7)

    # The group's directory owns no weights: losing it loses nothing.
    ray.kill(ray.get_actor("holder:fragile-holder", namespace=NAMESPACE), no_restart=True)
    assert wait_until(lambda: not holder_alive("fragile-holder"), timeout=60)  # ray.kill is asynchronous
    assert torch.equal(load_published("fragile")(INPUT), expected)

    # The node holder owns this node's copy, the only one: losing it loses the model.
    node = ray.get_runtime_context().get_node_id()
    ray.kill(ray.get_actor(holder_name("fragile-holder", node), namespace=NAMESPACE), no_restart=True)
    assert wait_until(lambda: holder_name("fragile-holder", node) not in holder_actors(), timeout=60)
    with pytest.raises(ModelNotPublishedError) as caught:
        load_published("fragile")
    message = str(caught.value)
    assert "'fragile'" in message and node in message  # says where the copies were
    assert "get_or_publish('fragile'" in message and "publish('fragile'" in message
    assert isinstance(caught.value, LookupError)

    assert torch.equal(ray.get(user.predict.remote(INPUT)), expected)  # loaded before: keeps working
    assert torch.equal(load_published("bystander")(INPUT), expected_output(1))

    model = get_or_publish("fragile", loader)  # no node holds it: the loader runs again
    assert runs(log) == 2
    [info] = [m for m in list_published() if m.name == "fragile"]
    assert (info.holder, info.version) == ("fragile-holder", 2)
    assert torch.equal(model(INPUT), expected)
    assert all(ray_zerocopy.aliases_object_store(p) for p in model.parameters())
    ray.kill(user)


def test_unknown_name_lists_what_is_published(cleanup: list[str]) -> None:
    cleanup.append("known-model")
    publish("known-model", make_model(1))
    with pytest.raises(ModelNotPublishedError, match="No model is published under the name 'unknown-model'") as caught:
        load_published("unknown-model")
    assert "'known-model' (v1" in str(caught.value)
    with pytest.raises(ModelNotPublishedError):
        unpublish("unknown-model")
    assert unpublish("unknown-model", missing_ok=True) is False


def test_unpublish_frees_the_store_once_loaders_drop_it(cleanup: list[str]) -> None:
    cleanup.append("to-free")
    baseline = wait_for_store(lambda used: True)
    info = publish("to-free", make_model(64, seed=2))
    user = User.remote()
    assert ray.get(user.load.remote("to-free"))

    assert unpublish("to-free") is True
    assert "to-free" not in [m.name for m in list_published()]
    with pytest.raises(ModelNotPublishedError, match="No model is published under the name 'to-free'"):
        load_published("to-free")
    assert torch.equal(ray.get(user.predict.remote(INPUT)), expected_output(64, seed=2))  # still loaded

    ray.get(user.drop.remote())
    used = wait_for_store(lambda used: used < baseline + info.nbytes / 4)
    assert used < baseline + info.nbytes / 4
    ray.kill(user)

    assert wait_until(lambda: holder_actors() == [], timeout=60)  # the default holder stored nothing else: stopped


def holder_actors() -> list[str]:
    """The named-model holders alive now."""
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]


def holder_alive(holder: str) -> bool:
    """Whether the holder actor ``holder`` is still alive."""
    return f"holder:{holder}" in holder_actors()


def test_republish_replaces_while_old_loads_keep_the_old_version(cleanup: list[str]) -> None:
    cleanup.append("versioned")
    baseline = wait_for_store(lambda used: True)
    first = publish("versioned", make_model(32, seed=0))
    old_user = User.remote()
    assert ray.get(old_user.load.remote("versioned"))

    second = publish("versioned", make_model(32, seed=1))
    assert (first.version, second.version) == (1, 2)
    assert torch.equal(load_published("versioned")(INPUT), expected_output(32, seed=1))
    assert torch.equal(ray.get(old_user.predict.remote(INPUT)), expected_output(32, seed=0))
    assert store_bytes_used() >= baseline + first.nbytes + second.nbytes  # both live while used

    ray.get(old_user.drop.remote())
    used = wait_for_store(lambda used: used <= baseline + 1.2 * second.nbytes)
    assert used <= baseline + 1.2 * second.nbytes  # the old version was freed
    ray.kill(old_user)


class TwoModels:
    """A pipeline of two models and a plain attribute."""

    def __init__(self) -> None:
        torch.manual_seed(11)
        self.encoder = nn.Linear(64, 32)
        self.decoder = script(nn.Linear(32, 8))
        self.scale = 2.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x)) * self.scale


def test_pipelines_and_torchscript_are_published_through_their_backends(cleanup: list[str]) -> None:
    require("ray_zerocopy_jit", "TorchScript models in a pipeline")
    cleanup.append("pipeline")
    info = publish("pipeline", TwoModels, use_fast_load=True)  # a class is a loader too
    assert dict(info.backends) == {"encoder": "nn", "decoder": "jit"}
    loaded = load_published("pipeline")
    with torch.no_grad():
        assert torch.equal(loaded(INPUT), TwoModels()(INPUT))
    assert loaded.scale == 2.0
    assert ray_zerocopy.aliases_object_store(loaded.encoder.weight)
    assert not isinstance(loaded.encoder.weight, nn.Parameter)  # use_fast_load default kept
    assert isinstance(load_published("pipeline", use_fast_load=False).encoder.weight, nn.Parameter)


def failing_loader() -> nn.Module:
    raise ValueError("checkpoint is corrupt")


def test_a_failing_loader_reaches_the_caller_and_stores_nothing() -> None:
    with pytest.raises(ValueError, match="checkpoint is corrupt"):
        publish("broken", failing_loader)
    with pytest.raises(ValueError, match="checkpoint is corrupt"):
        get_or_publish("broken", failing_loader)
    assert "broken" not in [m.name for m in list_published()]
    with pytest.raises(ModelNotPublishedError, match="No model is published under the name 'broken'"):
        load_published("broken")
    assert wait_until(lambda: holder_actors() == [], timeout=60)  # the holder it started stores nothing: stopped


def export_linear() -> Any:
    """An exported program (torch.export) of a small linear layer: a loader for the export backend."""
    torch.manual_seed(13)
    return torch.export.export(nn.Linear(64, 16).eval(), (INPUT,))


def test_exported_programs_are_published_through_their_backend(cleanup: list[str]) -> None:
    require("ray_zerocopy_export", "exported programs")
    cleanup.append("exported")
    info = publish("exported", export_linear)
    assert dict(info.backends) == {"": "export"}
    program = load_published("exported")
    with torch.no_grad():
        assert torch.equal(program.module()(INPUT), export_linear().module()(INPUT))
    assert all(ray_zerocopy.aliases_object_store(t) for t in program.state_dict.values())
