"""What the public API promises: wrappers that are what they say, one error family, versioned payloads."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import ray
import torch
from models import script
from not_installed import not_installed
from torch import nn

import ray_zerocopy
import ray_zerocopy_core.registry
from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper, ZeroCopyError
from ray_zerocopy_core import errors, plugin
from ray_zerocopy_core.errors import FormatVersionError
from ray_zerocopy_core.sharing import rebuild_model
from ray_zerocopy_core.store import fetch_payload

pytestmark = pytest.mark.usefixtures("ray_local")


class EncoderDecoder:
    def __init__(self) -> None:
        torch.manual_seed(0)
        self.enc = nn.Linear(8, 8).eval()
        self.dec = nn.Linear(8, 2).eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(self.enc(x))


# --- wrappers that are what they say ---------------------------------------------------


def test_fixed_mode_wrappers_refuse_the_other_mode_and_default_to_theirs() -> None:
    model = nn.Linear(4, 4)
    assert type(ActorWrapper.from_model(model)) is ActorWrapper and ActorWrapper.from_model(model).mode == "actor"
    assert TaskWrapper.from_model(model).mode == "task"
    with pytest.raises(ray_zerocopy.errors.WrongModeError, match="TaskWrapper"):
        ActorWrapper.from_model(model, mode="task")
    with pytest.raises(ray_zerocopy.errors.WrongModeError, match="ActorWrapper"):
        TaskWrapper.from_model(model, mode="actor")
    assert ModelWrapper.from_model(model, mode="task").mode == "task"


def test_task_wrapper_takes_prefault() -> None:
    model = nn.Linear(4, 4).eval()
    wrapper = TaskWrapper(model, prefault=True)
    assert wrapper._options.prefault
    x = torch.randn(2, 4)
    assert torch.equal(wrapper(x), model(x))


def test_constructor_kwargs_carry_every_load_option() -> None:
    plain = ActorWrapper(EncoderDecoder()).constructor_kwargs  # what constructors of earlier versions take
    assert set(plain) == {"pipeline_skeleton", "model_refs", "device", "use_fast_load"}
    wrapper = ActorWrapper(EncoderDecoder(), writable=True, prefault=True, use_fast_load=True)
    kwargs = wrapper.constructor_kwargs
    assert kwargs["writable"] and kwargs["prefault"] and kwargs["use_fast_load"]
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"load_pipeline_in_actor\(\) is deprecated", category=DeprecationWarning
        )
        pipeline = ray_zerocopy.load_pipeline_in_actor(**kwargs)
    pipeline.enc.weight.add_(1)  # writable=True travelled: a private copy takes the write
    assert not torch.equal(pipeline.enc.weight, EncoderDecoder().enc.weight)


def test_model_names_of_a_bare_model_are_empty_and_of_a_pipeline_in_order() -> None:
    assert ActorWrapper(nn.Linear(2, 2)).model_names == []
    assert ActorWrapper(EncoderDecoder()).model_names == ["enc", "dec"]


def test_one_model_attr_name_as_a_string() -> None:
    wrapper = ActorWrapper(EncoderDecoder(), model_attr_names="enc")
    assert wrapper.model_names == ["enc"]
    pipeline = wrapper.load()
    assert isinstance(pipeline.enc, nn.Linear) and isinstance(pipeline.dec, nn.Linear)


# --- one error family ------------------------------------------------------------------

BUILTINS = (ValueError, TypeError, ImportError, LookupError, AttributeError, RuntimeError, MemoryError)


def _calls() -> dict[str, tuple[Callable[[], Any], type[BaseException]]]:
    """Bad inputs across the public API, each with the builtin a caller would catch."""
    actor_wrapper = ActorWrapper(nn.Linear(2, 2))
    task_wrapper = TaskWrapper(nn.Linear(2, 2))
    released = ActorWrapper(nn.Linear(2, 2))
    released.release()
    unpicklable = threading.Lock()
    return {
        "bad mode string": (lambda: ModelWrapper(nn.Linear(2, 2), mode="actors"), ValueError),  # type: ignore[arg-type]
        "not a model": (lambda: ActorWrapper(42), ValueError),
        "pipeline without models": (lambda: ActorWrapper(EncoderDecoder(), model_attr_names=["nope"]), ValueError),
        "meta weights": (lambda: ActorWrapper(nn.Linear(2, 2, device="meta")), TypeError),
        "wrong type passed to load": (lambda: rebuild_model("not a ref", plugin.LoadOptions()), TypeError),
        "ref to something else": (lambda: fetch_payload(ray.put(123)), TypeError),
        "method_names in actor mode": (lambda: ModelWrapper(nn.Linear(2, 2), method_names=["x"]), TypeError),
        "calling an actor wrapper": (lambda: actor_wrapper(torch.ones(2)), TypeError),
        "attribute of an actor wrapper": (lambda: actor_wrapper.forward, AttributeError),
        "unknown task method": (lambda: task_wrapper.load().encode, AttributeError),
        "unknown backend name": (lambda: ray_zerocopy_core.registry.get_backend("nope"), LookupError),
        "registering a non-backend": (lambda: ray_zerocopy_core.registry.register_backend(object()), TypeError),  # type: ignore[arg-type]
        "released wrapper": (lambda: released.load(), RuntimeError),
        "unknown published name": (lambda: ray_zerocopy.load_published("no-such-model-here"), LookupError),
        "empty published name": (lambda: ray_zerocopy.publish(" ", nn.Linear(2, 2)), ValueError),
        "loader that is not callable": (lambda: ray_zerocopy.get_or_publish("x", 42), TypeError),  # type: ignore[arg-type]
        "loader that cannot be pickled": (lambda: ray_zerocopy.get_or_publish("x", lambda: unpicklable), TypeError),
        "backend package not installed": (_wrap_a_script_module_without_the_jit_package, ImportError),
    }


def _wrap_a_script_module_without_the_jit_package() -> None:
    scripted = script(nn.Linear(2, 2))
    with not_installed("ray_zerocopy_jit"):
        ActorWrapper(scripted)


def test_every_error_raised_on_purpose_is_a_zerocopy_error_and_the_builtin_a_caller_catches() -> None:
    failures = []
    for label, (call, builtin) in _calls().items():
        try:
            call()
        except BaseException as exc:
            if not (isinstance(exc, ZeroCopyError) and isinstance(exc, builtin)):
                failures.append(f"{label}: {type(exc).__mro__} is not ZeroCopyError + {builtin.__name__}")
        else:
            failures.append(f"{label}: raised nothing")
    assert not failures, "\n".join(failures)


def test_every_error_class_derives_from_zerocopy_error_and_a_builtin() -> None:
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, Exception) and cls is not ZeroCopyError:
            assert issubclass(cls, ZeroCopyError), name
            assert any(issubclass(cls, builtin) for builtin in BUILTINS), name


# --- versioned payloads ----------------------------------------------------------------


@ray.remote(num_cpus=0.1)
def load_in_worker(ref_box: list[ray.ObjectRef]) -> str:
    try:
        rebuild_model(ref_box[0], plugin.LoadOptions())
    except FormatVersionError as exc:
        return str(exc)
    return "loaded"


def test_a_model_stored_by_another_release_names_both_versions() -> None:
    wrapper = ActorWrapper(nn.Linear(64, 64))
    (ref,) = wrapper._shared.refs.values()
    head = ray.get(ref)
    foreign = ray.put({**head, "release": "0.9.1", "format_version": 1})
    message = ray.get(load_in_worker.remote([foreign]))
    assert "0.9.1" in message and plugin.RELEASE in message, message
    assert "format 1" in message and f"format {plugin.FORMAT_VERSION}" in message
    with pytest.raises(FormatVersionError, match="same ray-zerocopy release"):
        fetch_payload(foreign)
    assert ray.get(load_in_worker.remote([ref])) == "loaded"


def test_a_head_whose_other_fields_changed_is_still_a_version_error() -> None:
    """The head is plain builtins read for its versions first: a future layout's index is never unpickled."""
    future = {"index": b"not a pickle of this release", "chunks": [], "format_version": 99, "release": "7.0.0"}
    with pytest.raises(FormatVersionError, match="7.0.0"):
        fetch_payload(ray.put({**future, "a": "field of a future layout"}))
