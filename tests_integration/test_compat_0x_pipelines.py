"""ray-zerocopy 0.x users' pipelines: models captured by a closure or a global are shared, not refused.

A pipeline class defined inside a function (closure) or in a script's ``__main__``
(global) is pickled by value with what its methods use. Each reference to a shared
model becomes the same stand-in as the attribute, so the weights stay in the object
store and the wrapper stays small, eager and TorchScript, actor and task mode.
"""

from __future__ import annotations

import inspect
import json
import pickle
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from models import WhereTensorsLie
from scripts import run_driver
from torch import nn

from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper
from ray_zerocopy_core.errors import PipelineError
from ray_zerocopy_core.inspection import aliases_object_store

pytestmark = pytest.mark.usefixtures("ray_local")

#: A wrapper that carried a 1 MiB model by value would be at least this large.
SMALL_WRAPPER = 64 * 1024

DRIVER = textwrap.dedent(
    """
    import inspect, json, pickle, sys
    import ray, torch
    from torch import nn
    from ray_zerocopy import ModelWrapper
    from ray_zerocopy_core.inspection import aliases_object_store

    ray.init(logging_level="ERROR")
    torch.set_num_threads(1)  # the reference runs on one thread, as the workers do
    torch.manual_seed(0)
    model = {model}

    class Global:
        def __init__(self):
            self.model = model

        def __call__(self, x):
            return model(x) * 2  # the global, not the attribute

    def make_closure():
        captured = model

        class Closure:
            def __init__(self):
                self.model = captured

            def __call__(self, x):
                return captured(x) * 2

        return Closure()

    def captured_of(pipeline):
        found = inspect.getclosurevars(type(pipeline).__call__)
        return {{**found.globals, **found.nonlocals}}.get("model", found.nonlocals.get("captured"))

    @ray.remote(num_cpus=1)
    def in_worker(wrapper, x):
        pipeline = wrapper.load()
        shared = all(aliases_object_store(t) for t in pipeline.model.state_dict().values())
        return pipeline(x), shared, captured_of(pipeline) is pipeline.model

    @ray.remote(num_cpus=0.5)
    def call_elsewhere(wrapper, x):
        return wrapper(x)

    x = torch.randn(4, 512)
    for style, make in (("global", Global), ("closure", make_closure)):
        pipeline = make()
        expected = pipeline(x)
        for mode in ("actor", "task"):
            wrapper = ModelWrapper.from_model(pipeline, mode=mode)
            row = {{"style": style, "mode": mode, "pickled": len(pickle.dumps(wrapper)), "nbytes": wrapper.nbytes}}
            if mode == "actor":
                out, row["shared"], row["captured_is_model"] = ray.get(in_worker.remote(wrapper, x))
                row["equal"] = torch.equal(out, expected)
            else:
                row["equal"] = torch.equal(wrapper(x), expected)
                row["equal_elsewhere"] = torch.equal(ray.get(call_elsewhere.remote(wrapper, x)), expected)
            print("ROW", json.dumps(row), flush=True)
    """
)

MODELS = {"eager": "nn.Linear(512, 512)", "torchscript": "torch.jit.script(nn.Linear(512, 512))"}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_captured_models_are_shared_in_both_modes(tmp_path: Path, kind: str) -> None:
    script = tmp_path / "captured.py"
    script.write_text(DRIVER.format(model=MODELS[kind]))
    output = run_driver(script, timeout=240, label=f"captured {kind} pipelines")
    rows = [json.loads(line[4:]) for line in output.splitlines() if line.startswith("ROW ")]
    assert len(rows) == 4, output[-3000:]
    for row in rows:
        where = f"{row['style']} pipeline in {row['mode']} mode: {row}"
        assert row["nbytes"] == 512 * 512 * 4 + 512 * 4, where  # the weights are in the object store
        assert row["pickled"] < SMALL_WRAPPER, where  # and not in the wrapper
        assert row["equal"], where
        if row["mode"] == "actor":
            assert row["shared"] and row["captured_is_model"], where
        else:
            assert row["equal_elsewhere"], where


def test_a_closure_pipeline_in_this_process(one_thread: None) -> None:
    torch.manual_seed(0)
    encoder = torch.jit.script(nn.Linear(512, 512))

    class Captures:
        def __init__(self) -> None:
            self.encoder = encoder

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return encoder(x) + 1

    def captured(pipeline: Any) -> Any:
        return inspect.getclosurevars(type(pipeline).__call__).nonlocals["encoder"]

    pipeline = Captures()
    x = torch.randn(2, 512)
    wrapper = ModelWrapper.from_model(pipeline)
    assert len(pickle.dumps(wrapper)) < SMALL_WRAPPER
    here = wrapper.load()  # in the caller: its own class, closures untouched
    assert type(here) is Captures and captured(here) is encoder and here.encoder is not encoder
    first, second = (pickle.loads(pickle.dumps(wrapper)).load() for _ in range(2))
    for loaded in (first, second):  # as in a worker: a class of its own per load
        assert captured(loaded) is loaded.encoder and torch.equal(loaded(x), pipeline(x))
        assert all(aliases_object_store(t) for t in loaded.encoder.state_dict().values())
    assert type(first) is not type(second) and captured(first) is not captured(second)
    assert captured(pipeline) is encoder and Captures.__call__ is type(here).__call__


@pytest.mark.parametrize("kind", ["eager", "torchscript"])
def test_a_captured_model_that_is_not_shared_is_named(kind: str) -> None:
    torch.manual_seed(0)
    shared = nn.Linear(8, 512)
    other: nn.Module = nn.Linear(512, 512)  # 1 MiB, reached only through the closure
    if kind == "torchscript":
        other = torch.jit.script(other)

    class Pipeline:
        def __init__(self) -> None:
            self.model = shared

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return other(self.model(x))

    named = r"closure variable 'other' \(used by .*Pipeline.__call__\)"
    with pytest.raises(PipelineError, match=named):  # actor mode: refused before anything is stored
        ModelWrapper.from_model(Pipeline(), mode="actor")
    wrapper = ModelWrapper.from_model(Pipeline(), mode="task")  # task mode: the pipeline stays here...
    assert wrapper(torch.ones(8)).shape == (512,)
    with pytest.raises(PipelineError, match=named):  # ...until the wrapper itself is pickled
        pickle.dumps(wrapper)


class Scorer(nn.Module):
    """A model with a method of its own, for method_names."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    @torch.jit.export
    def score(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).sum(dim=-1)


@pytest.mark.parametrize("kind", ["eager", "torchscript"])
def test_method_names_no_model_has_warn_once_and_are_ignored(kind: str) -> None:
    torch.manual_seed(0)
    model: Any = Scorer() if kind == "eager" else torch.jit.script(Scorer())
    kinds = type(model).__qualname__

    class Pipeline:
        def __init__(self) -> None:
            self.model = model

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

    x = torch.randn(2, 16)
    with warnings.catch_warnings(record=True) as found:
        warnings.simplefilter("always")
        wrapper = TaskWrapper(Pipeline(), method_names=("predict", "score"), device=None)
        again = TaskWrapper(Pipeline(), method_names=("predict", "score"))
    messages = [
        str(w.message) for w in found if issubclass(w.category, UserWarning) and "method_names" in str(w.message)
    ]
    assert len(messages) == 1 and "'predict'" in messages[0] and f"({kinds})" in messages[0], messages
    assert wrapper.predict(x).shape == (2, 16)  # __call__ was kept
    assert torch.allclose(again.load().model.score(x), model.score(x))


@ray.remote(num_cpus=0.5)
class Rebuilder:
    """Rebuilds a wrapper from ``serialize()``'s dict, as 0.x users did in actors."""

    def __init__(self, parts: dict[str, Any], jit: bool) -> None:
        from ray_zerocopy import JITModelWrapper

        cls = JITModelWrapper if jit else ModelWrapper
        self.wrapper = cls.deserialize(**parts)

    def run(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, bool]]:
        """The model's output, and where each of its tensors lies (in the task worker in task mode)."""
        if self.wrapper.mode == "task":
            return self.wrapper(x), self.wrapper.state_dict(destination=WhereTensorsLie()).in_object_store
        model = self.wrapper.load()
        return model(x), {name: aliases_object_store(t) for name, t in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["eager", "torchscript"])
@pytest.mark.parametrize("mode", ["actor", "task"])
def test_serialize_and_deserialize_round_trip_in_an_actor(kind: str, mode: str, one_thread: None) -> None:
    from ray_zerocopy import JITModelWrapper

    torch.manual_seed(0)
    model: Any = nn.Linear(64, 64) if kind == "eager" else torch.jit.script(nn.Linear(64, 64))
    cls = JITModelWrapper if kind == "torchscript" else ModelWrapper
    # Task mode: the worker's model answers state_dict, so the test can see where its weights lie.
    wrapper = cls.from_model(
        model, mode=mode, **({"method_names": ["__call__", "state_dict"]} if mode == "task" else {})
    )
    parts = wrapper.serialize()
    assert pickle.loads(pickle.dumps(parts)).keys() == parts.keys()  # plain picklable values
    assert wrapper.model_refs == parts["model_refs"] and list(wrapper.model_refs) == [""]
    actor = Rebuilder.remote(parts, kind == "torchscript")
    x = torch.randn(3, 64)
    out, shared = ray.get(actor.run.remote(x))
    ray.kill(actor)
    assert torch.equal(out, model(x))
    assert shared == {"weight": True, "bias": True}, shared


def test_load_accepts_0x_use_fast_load_spelling_with_a_warning() -> None:
    wrapper = ModelWrapper.from_model(nn.Linear(4, 4))
    with pytest.warns(DeprecationWarning, match=r"_use_fast_load.*use load\(use_fast_load=\.\.\.\)"):
        fast = wrapper.load(_use_fast_load=True)
    assert not isinstance(fast.weight, nn.Parameter)
    assert isinstance(wrapper.load().weight, nn.Parameter)
    assert inspect.signature(ActorWrapper.load).parameters["use_fast_load"].default is None


def test_deserialize_keeps_the_class_mode() -> None:
    from ray_zerocopy import ActorWrapper
    from ray_zerocopy.errors import WrongModeError

    parts = ModelWrapper.from_model(nn.Linear(4, 4), mode="task").serialize()
    assert TaskWrapper.deserialize(**{**parts, "mode": "task"}).mode == "task"
    with pytest.raises(WrongModeError, match="ActorWrapper is for actor mode"):
        ActorWrapper.deserialize(**parts)
