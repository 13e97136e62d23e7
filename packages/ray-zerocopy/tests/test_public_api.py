"""The meta package re-exports core, keeps the seed import paths, and reports its version."""

from __future__ import annotations

from importlib import metadata

import ray_zerocopy
import ray_zerocopy.actor
import ray_zerocopy.invoke
import ray_zerocopy.legacy
import ray_zerocopy.wrappers
import ray_zerocopy_core


def test_version_is_the_installed_one_and_matches_core() -> None:
    assert ray_zerocopy.__version__ == metadata.version("ray-zerocopy")
    assert ray_zerocopy.__version__ == ray_zerocopy_core.__version__


def test_every_core_name_is_re_exported() -> None:
    for name in set(ray_zerocopy_core.__all__) - {"__version__"}:
        assert getattr(ray_zerocopy, name) is getattr(ray_zerocopy_core, name), name


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
