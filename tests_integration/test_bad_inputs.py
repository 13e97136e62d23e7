"""The bad-input catalogue: every input tried gets a typed error whose message names the fix.

Each test here is one row of the table in ``docs/safety.md``. A few inputs turn out to
be supported (forward hooks, ``torch.compile``'d models); their tests show they work
on a real Ray worker.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
import ray
import torch
from models import script
from not_installed import not_installed
from torch import nn

import ray_zerocopy
from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper
from ray_zerocopy.errors import BackendNotInstalledError, PipelineError, UnsupportedModelError, WrongModeError
from ray_zerocopy_core.inspection import aliases_object_store

pytestmark = pytest.mark.usefixtures("ray_local")


def small() -> nn.Module:
    return nn.Linear(4, 2)


class Pipeline:
    """A pipeline: models as attributes, plus whatever else the test adds."""

    def __init__(self, **extra: Any) -> None:
        self.encoder = small()
        for name, value in extra.items():
            setattr(self, name, value)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class Empty:
    def __init__(self) -> None:
        self.threshold = 0.5


# --- what is wrapped --------------------------------------------------------------------


@pytest.mark.parametrize("obj", [3, "model.pt", None], ids=["int", "str", "None"])
def test_non_module_object_is_refused(obj: Any) -> None:
    with pytest.raises(PipelineError, match="Pass the model itself, or an object that holds the models"):
        ActorWrapper(obj)


@pytest.mark.parametrize("obj", [[small(), small()], {"a": small()}], ids=["list", "dict"])
def test_list_or_dict_of_models_is_refused(obj: Any) -> None:
    with pytest.raises(PipelineError, match="lists and dicts of models are not searched"):
        ActorWrapper(obj)


def test_bare_tensor_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"No model found in Tensor.*model_attr_names"):
        ActorWrapper(torch.ones(3))


def test_empty_pipeline_is_refused() -> None:
    with pytest.raises(PipelineError, match=r"No model found in Empty.*Give the models as attributes"):
        TaskWrapper(Empty())


def test_model_attr_names_naming_a_missing_attribute() -> None:
    with pytest.raises(PipelineError, match=r"no attribute 'decoder'.*found: 'encoder'"):
        ActorWrapper(Pipeline(), model_attr_names=["encoder", "decoder"])


def test_model_attr_names_naming_a_non_model() -> None:
    with pytest.raises(PipelineError, match=r"'threshold'.*model_attr_names must name attributes that hold models"):
        ActorWrapper(Pipeline(threshold=0.5), model_attr_names=["threshold"])


def test_meta_tensors_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match=r"'weight' is on the 'meta' device.*to_empty"):
        ActorWrapper(nn.Linear(4, 2, device="meta"))


class WithBuffer(nn.Module):
    def __init__(self, buffer: torch.Tensor) -> None:
        super().__init__()
        self.linear = small()
        self.register_buffer("extra", buffer)


def test_sparse_tensors_are_refused() -> None:
    with pytest.raises(UnsupportedModelError, match=r"'extra' has layout torch.sparse_coo.*to_dense\(\)"):
        ActorWrapper(WithBuffer(torch.eye(3).to_sparse()))


def test_nested_tensors_are_refused() -> None:
    with warnings.catch_warnings():
        # torch warns that nested tensors are a prototype; creating one is the point here.
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors", category=UserWarning)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(UnsupportedModelError, match=r"nested tensor.*padded dense tensor"):
        ActorWrapper(WithBuffer(nested))


@pytest.mark.parametrize("kind", ["lock", "file_open_for_writing"])
def test_unpicklable_pipeline_attribute(kind: str, tmp_path: Any) -> None:
    resource = threading.Lock() if kind == "lock" else open(tmp_path / "log.txt", "w")  # noqa: SIM115
    try:
        with pytest.raises(PipelineError, match=r"attribute 'resource'.*unpicklable resources lazily"):
            ActorWrapper(Pipeline(resource=resource))
    finally:
        if kind != "lock":
            resource.close()


class ModuleWithLock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = small()
        self.lock = threading.Lock()


def test_unpicklable_state_inside_a_model() -> None:
    with pytest.raises(UnsupportedModelError, match=r"ModuleWithLock without its weights.*move unpicklable state"):
        ActorWrapper(ModuleWithLock())


# --- modes and methods ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["actors", "Task", None])
def test_wrong_mode_string(mode: Any) -> None:
    with pytest.raises(ValueError, match="mode must be 'actor' or 'task'"):
        ModelWrapper.from_model(small(), mode=mode)


def test_unknown_method_name_in_task_mode() -> None:
    wrapper = TaskWrapper(small())
    with pytest.raises(AttributeError, match=r"'encode' is not a remote method.*method_names="):
        wrapper.encode(torch.ones(4))


def test_method_names_naming_a_method_no_model_has_warn_and_are_ignored() -> None:
    # ray-zerocopy 0.x ignored such names: they warn once, when wrapping, and __call__ still works.
    with pytest.warns(UserWarning, match=r"'decode_bad_input'.*no model \(Linear\).*ignored"):
        wrapper = TaskWrapper(small(), method_names=["__call__", "decode_bad_input"])
    assert wrapper.method_names == ("__call__",)


def test_actor_mode_wrapper_called_like_a_task_wrapper() -> None:
    wrapper = ActorWrapper(small())
    with pytest.raises(WrongModeError, match=r"actor mode and cannot be called.*\.load\(\)"):
        wrapper(torch.ones(4))
    with pytest.raises(AttributeError, match=r"call \.load\(\) in the worker"):
        wrapper.encoder  # noqa: B018


def test_method_names_in_actor_mode() -> None:
    with pytest.raises(WrongModeError, match="task mode only; use mode='task'"):
        ModelWrapper.from_model(small(), mode="actor", method_names=["encode"])


def test_load_model_in_actor_given_something_else() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message="load_model_in_actor")
        with pytest.raises(TypeError, match=r"got ActorWrapper\. Pass what the wrapper or prepare_model_for_actors"):
            ray_zerocopy.load_model_in_actor(ActorWrapper(small()))
        with pytest.raises(TypeError, match=r"got int\. Pass what"):
            ray_zerocopy.load_model_in_actor(3)
        with pytest.raises(TypeError, match=r"does not point to a ray-zerocopy model \(it holds a int\)"):
            ray_zerocopy.load_model_in_actor(ray.put(3))


# --- TorchScript without the jit package ----------------------------------------------------


def scripted() -> torch.jit.ScriptModule:
    return script(small())


def test_script_module_with_jit_package_unimportable() -> None:
    needs_jit = r"needs the 'jit' backend.*pip install 'ray-zerocopy\[jit\]'"
    # The entry point is declared, the import fails.
    with not_installed("ray_zerocopy_jit", declared=True), pytest.raises(BackendNotInstalledError, match=needs_jit):
        ActorWrapper(scripted())


def test_script_module_with_jit_package_not_installed() -> None:
    # No distribution declares the 'jit' entry point: the ScriptModule must not fall into 'nn'.
    not_there = r"which is not installed.*pip install 'ray-zerocopy\[jit\]'"
    with not_installed("ray_zerocopy_jit"), pytest.raises(BackendNotInstalledError, match=not_there):
        TaskWrapper(Pipeline(encoder=scripted()))


# --- supported after all: hooks and torch.compile ---------------------------------------


def add_seven(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output + 7


def scale_input(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (inputs[0] * 2,)


@ray.remote(num_cpus=0.1)
def load_and_call(wrapper: ActorWrapper, x: torch.Tensor) -> tuple[str, torch.Tensor, bool]:
    model = wrapper.load()
    weights_shared = all(aliases_object_store(t) for t in model.state_dict().values())
    return type(model).__name__, model(x), weights_shared


def test_forward_hooks_survive_sharing() -> None:
    model = small()
    model.register_forward_pre_hook(scale_input)
    model.register_forward_hook(add_seven)
    x = torch.ones(3, 4)
    expected = model(x)
    assert torch.equal(expected, nn.functional.linear(x * 2, model.weight, model.bias) + 7)

    name, output, shared = ray.get(load_and_call.remote(ActorWrapper(model), x), timeout=120)
    assert (name, shared) == ("Linear", True)
    assert torch.equal(output, expected)
    assert torch.equal(TaskWrapper(model)(x), expected)


def test_torch_compiled_model_is_shared_and_compiles_in_the_worker() -> None:
    # Supported: the OptimizedModule travels with its original module, whose weights are
    # shared zero-copy like any other; each worker compiles on its first call.
    eager = small()
    compiled = torch.compile(eager, backend="eager")
    x = torch.ones(3, 4)
    name, output, shared = ray.get(load_and_call.remote(ActorWrapper(compiled), x), timeout=300)
    assert (name, shared) == ("OptimizedModule", True)
    assert torch.allclose(output, eager(x))
