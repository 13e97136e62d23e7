"""The legacy function API: one implementation in ``ray_zerocopy.legacy``, every old path kept.

Only checks that need no Ray cluster are here (import paths, warnings, argument
checks); ``tests_integration`` runs each legacy function on a real local Ray.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import MethodType
from typing import Any

import pytest
import torch

import ray_zerocopy
import ray_zerocopy.actor
import ray_zerocopy.invoke
import ray_zerocopy.jit
import ray_zerocopy.jit.actor
import ray_zerocopy.jit.invoke
import ray_zerocopy.legacy as legacy
import ray_zerocopy_core
import ray_zerocopy_jit
from ray_zerocopy.errors import UnsupportedModelError

EAGER = ["load_model_in_actor", "load_pipeline_in_actor", "prepare_model_for_actors", "rewrite_pipeline"]
EAGER += ["rewrite_pipeline_for_actors"]


def test_every_old_import_path_reaches_the_one_implementation() -> None:
    for name in EAGER:
        assert getattr(ray_zerocopy, name) is getattr(legacy, name)
        assert name not in ray_zerocopy.__all__  # reachable, with its warning, but not advertised
    assert ray_zerocopy.invoke.rewrite_pipeline is legacy.rewrite_pipeline
    assert ray_zerocopy.actor.load_pipeline_in_actor is legacy.load_pipeline_in_actor
    assert ray_zerocopy.jit.rewrite_pipeline is ray_zerocopy.jit.invoke.rewrite_pipeline is legacy.jit_rewrite_pipeline
    jit_actor = ray_zerocopy.jit.actor
    assert jit_actor.prepare_jit_model_for_actors is legacy.prepare_jit_model_for_actors
    assert jit_actor.load_jit_model_in_actor is legacy.load_jit_model_in_actor
    assert jit_actor.rewrite_pipeline_for_actors is legacy.jit_rewrite_pipeline_for_actors
    assert jit_actor.load_pipeline_in_actor is legacy.jit_load_pipeline_in_actor


def test_legacy_names_live_only_in_the_meta_package() -> None:
    for name in [*EAGER, "prepare_jit_model_for_actors", "load_jit_model_in_actor"]:
        assert name not in ray_zerocopy_core.__all__ and not hasattr(ray_zerocopy_core, name), name
        assert name not in ray_zerocopy_jit.__all__ and not hasattr(ray_zerocopy_jit, name), name


def test_each_function_is_written_once_and_bound_to_its_family() -> None:
    for name in EAGER:
        eager, jit = getattr(legacy, name), getattr(legacy.JIT, name)
        assert isinstance(eager, MethodType) and isinstance(jit, MethodType)
        assert eager.__self__ is legacy.EAGER and eager.__func__ is jit.__func__, name
    for jit_function in (legacy.jit_rewrite_pipeline, legacy.prepare_jit_model_for_actors):
        assert isinstance(jit_function, MethodType) and jit_function.__self__ is legacy.JIT


def caught(call: Callable[[], Any], error: type[Exception]) -> warnings.WarningMessage:
    """Run ``call`` (which raises ``error``); return the one DeprecationWarning it emitted."""
    with warnings.catch_warnings(record=True) as found, pytest.raises(error):
        warnings.simplefilter("always")
        call()
    (warning,) = [w for w in found if issubclass(w.category, DeprecationWarning)]
    return warning


@pytest.mark.parametrize(
    ("call", "old", "new"),
    [
        (lambda: ray_zerocopy.load_model_in_actor(3), "load_model_in_actor()", "ActorWrapper(model).load()"),
        (
            lambda: ray_zerocopy.jit.actor.load_jit_model_in_actor(3),
            "ray_zerocopy.jit.load_jit_model_in_actor()",
            "JITActorWrapper(model).load()",
        ),
    ],
)
def test_each_call_warns_at_the_callers_line_and_names_the_replacement(
    call: Callable[[], Any], old: str, new: str
) -> None:
    warning = caught(call, TypeError)
    assert str(warning.message) == f"{old} is deprecated; use {new} instead."
    assert warning.filename == __file__


def test_jit_prepare_refuses_an_eager_model_after_warning() -> None:
    eager = torch.nn.Linear(2, 2)
    warning = caught(lambda: ray_zerocopy.jit.actor.prepare_jit_model_for_actors(eager), UnsupportedModelError)
    assert "JITActorWrapper(model)" in str(warning.message)
