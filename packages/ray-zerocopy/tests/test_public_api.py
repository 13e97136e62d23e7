"""The meta package re-exports core, keeps the seed import paths, and reports its version."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import ray_zerocopy
import ray_zerocopy.actor
import ray_zerocopy.errors
import ray_zerocopy.invoke
import ray_zerocopy.legacy
import ray_zerocopy.wrappers
import ray_zerocopy_core
import ray_zerocopy_core.errors


def test_version_is_the_installed_one_and_matches_core() -> None:
    assert ray_zerocopy.__version__ == metadata.version("ray-zerocopy")
    assert ray_zerocopy.__version__ == ray_zerocopy_core.__version__


def test_every_core_name_is_re_exported() -> None:
    for name in set(ray_zerocopy_core.__all__) - {"__version__"}:
        assert getattr(ray_zerocopy, name) is getattr(ray_zerocopy_core, name), name


def test_the_public_surface_is_what_users_call() -> None:
    """The names users call, the TorchScript wrappers and the error families; the SDK lives in its modules."""
    assert sorted(ray_zerocopy.__all__) == sorted(
        [
            "ActorWrapper",
            "TaskWrapper",
            "ModelWrapper",
            "JITActorWrapper",
            "JITTaskWrapper",
            "JITModelWrapper",
            "Checkpoint",
            "publish",
            "get_or_publish",
            "load_published",
            "unpublish",
            "list_published",
            "replicate",
            "PublishedModel",
            "aliases_object_store",
            "ZeroCopyError",
            "UsageError",
            "WeightsUnavailableError",
            "__version__",
        ]
    )
    for name in ray_zerocopy.__all__:
        assert getattr(ray_zerocopy, name).__doc__ or name == "__version__", name
    assert set(ray_zerocopy.errors.__all__) == set(ray_zerocopy_core.errors.__all__)


def test_importing_defines_no_ray_actor_and_registers_nothing() -> None:
    """Importing has no side effects: a fresh interpreter imports every module and nothing is pickled by value."""
    code = (
        "import ray_zerocopy, ray_zerocopy_core.named.client, ray_zerocopy_core.named.directory,"
        " ray_zerocopy_core.cluster.holder, ray_zerocopy_core.cluster.directory;"
        "from ray import cloudpickle;"
        "print(sorted(cloudpickle.cloudpickle._PICKLE_BY_VALUE_MODULES))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_seed_import_paths_still_work() -> None:
    assert ray_zerocopy.invoke.rewrite_pipeline is ray_zerocopy.legacy.rewrite_pipeline
    for name in ray_zerocopy.actor.__all__:
        assert getattr(ray_zerocopy.actor, name) is getattr(ray_zerocopy.legacy, name)
        assert getattr(ray_zerocopy, name) is getattr(ray_zerocopy.legacy, name)
    assert ray_zerocopy.wrappers.TaskWrapper is ray_zerocopy.TaskWrapper


def test_jit_wrappers_are_the_four_wrappers_product() -> None:
    from ray_zerocopy import JITActorWrapper, JITModelWrapper, JITTaskWrapper

    assert issubclass(JITTaskWrapper, ray_zerocopy.TaskWrapper) and issubclass(JITTaskWrapper, JITModelWrapper)
    assert issubclass(JITActorWrapper, ray_zerocopy.ActorWrapper)
    assert ray_zerocopy.wrappers.JITActorWrapper is JITActorWrapper


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        ray_zerocopy.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
