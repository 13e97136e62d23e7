"""The torch.export backend on a real local Ray: actor and task mode, pipelines, safety, a HF model.

Every program is a ``torch.export.ExportedProgram``; inside the actors the loaded
program's ``state_dict`` and ``constants`` (and the module ``ep.module()`` builds from
them) are checked to lie in the object store's shared mapping, and outputs are compared
bit for bit with the program run in the driver.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import ray
import torch
from environment import assert_stopped_by_a_weight_write, require
from models import VOCAB, Loaded, process_id, script, tokens, trained_tower
from not_installed import not_installed
from torch import nn
from torch.export import Dim, ExportedProgram

from ray_zerocopy import ActorWrapper, ModelWrapper, TaskWrapper, aliases_object_store
from ray_zerocopy_core.errors import BackendNotInstalledError

pytestmark = pytest.mark.usefixtures("ray_local", "one_thread")  # references on one thread, as in workers

EXPORT_HINT = "pip install 'ray-zerocopy[export]'"
X = tokens()


def export_tower(dtype: torch.dtype = torch.float32, dim: int = 32) -> ExportedProgram:
    """The trained Tower, exported with a dynamic batch dimension."""
    return torch.export.export(trained_tower(dim, dtype), (X,), dynamic_shapes=({0: Dim("batch", min=1, max=512)},))


class MixedPipeline:
    """An eager embedding, a TorchScript block and an exported head, plus plain state."""

    def __init__(self) -> None:
        torch.manual_seed(3)
        self.embed = nn.Embedding(VOCAB, 16).eval()
        self.block = script(nn.Sequential(nn.Linear(16, 16), nn.Tanh()).eval())
        head = nn.Sequential(nn.Linear(16, 8), nn.ReLU()).eval()
        self.head = torch.export.export(head, (torch.zeros(4, 16),), dynamic_shapes=({0: Dim("rows")},))
        self.temperature = 2.0

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(ids).mean(dim=1))) / self.temperature


def run_local(pipeline: MixedPipeline, ids: torch.Tensor) -> torch.Tensor:
    """The pipeline in the driver (its exported head through ``module()``)."""
    hidden = pipeline.block(pipeline.embed(ids).mean(dim=1))
    return pipeline.head.module()(hidden) / pipeline.temperature


def inspect_program(program: Any) -> dict[str, Any]:
    """What an actor sees of a loaded program: its type, where its tensors live, ties."""
    tensors = [*program.state_dict.values(), *program.constants.values()]
    module = program.module()
    module_tensors = [*module.parameters(), *module.buffers()]
    return {
        "is_program": isinstance(program, ExportedProgram),
        "n_tensors": len(tensors),
        "all_alias_store": bool(tensors) and all(aliases_object_store(t) for t in tensors),
        "any_alias_store": any(aliases_object_store(t) for t in tensors),
        "module_alias_store": bool(module_tensors) and all(aliases_object_store(t) for t in module_tensors),
        "tied": program.state_dict.get("head.weight") is program.state_dict.get("embed.weight"),
        "any_requires_grad": any(t.requires_grad for t in tensors),
    }


def inspect_part(pipeline: Any, attr: str) -> dict[str, Any]:
    """:func:`inspect_program` of one model of a pipeline."""
    return inspect_program(getattr(pipeline, attr))


def run_module(program: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a loaded program through ``module()``, as in the driver."""
    with torch.no_grad():
        return program.module()(*args, **kwargs)


def weights(program: Any) -> dict[str, torch.Tensor]:
    """Private copies of a loaded program's weights, by name."""
    return {name: t.detach().clone() for name, t in program.state_dict.items()}


def write(program: Any) -> str:
    """Add 1 to ``proj.weight`` in place."""
    with torch.no_grad():
        program.state_dict["proj.weight"].add_(1)
    return "wrote"


def kill(*actors: Any) -> None:
    for actor in actors:
        ray.kill(actor)


def test_actor_mode_is_zero_copy_exact_and_dynamic() -> None:
    program = export_tower()
    wrapper = ActorWrapper(program)
    workers = [Loaded.remote(wrapper) for _ in range(2)]
    for info in ray.get([w.apply.remote(inspect_program) for w in workers]):
        assert info["is_program"] and info["all_alias_store"] and info["module_alias_store"]
        assert info["tied"] and not info["any_requires_grad"] and info["n_tensors"] >= 9
    expected = program.module()(X)
    for worker in workers:
        assert torch.equal(ray.get(worker.apply.remote(run_module, X)), expected)
        assert torch.equal(ray.get(worker.call.remote(X)), expected)
    for batch in (1, 17):  # a batch size the program was not traced with
        ids = tokens(batch, seed=batch)
        assert torch.equal(ray.get(workers[0].apply.remote(run_module, ids)), program.module()(ids))
    kill(*workers)


def test_model_wrapper_actor_mode_returns_an_exported_program() -> None:
    program = export_tower()
    wrapper = ModelWrapper.from_model(program, mode="actor")
    worker = Loaded.remote(wrapper)
    assert ray.get(worker.apply.remote(inspect_program))["is_program"]
    assert torch.equal(ray.get(worker.apply.remote(run_module, X)), program.module()(X))
    kill(worker)


def test_task_mode_runs_the_program_module() -> None:
    program = export_tower()
    expected = program.module()(X)
    assert torch.equal(TaskWrapper(program)(X), expected)
    wrapper = ModelWrapper.from_model(program, mode="task")
    for batch in (4, 11):
        ids = tokens(batch, seed=batch)
        assert torch.equal(wrapper(ids), program.module()(ids))


def test_mixed_pipeline_actor_mode() -> None:
    pipeline = MixedPipeline()
    wrapper = ActorWrapper(pipeline)
    assert sorted(wrapper.model_names) == ["block", "embed", "head"]
    worker = Loaded.remote(wrapper)
    head = ray.get(worker.apply.remote(inspect_part, "head"))
    assert head["is_program"] and head["all_alias_store"] and head["module_alias_store"]
    ids = tokens(6, seed=3)
    assert torch.equal(ray.get(worker.call.remote(ids)), run_local(pipeline, ids))
    kill(worker)


def test_mixed_pipeline_task_mode() -> None:
    pipeline = MixedPipeline()
    ids = tokens(5, seed=4)
    assert torch.equal(TaskWrapper(pipeline)(ids), run_local(pipeline, ids))


def test_bfloat16_program_is_bit_exact() -> None:
    program = export_tower(torch.bfloat16)
    worker = Loaded.remote(ActorWrapper(program))
    info = ray.get(worker.apply.remote(inspect_program))
    assert info["all_alias_store"] and info["tied"]
    out = ray.get(worker.apply.remote(run_module, X))
    assert out.dtype == torch.bfloat16 and torch.equal(out, program.module()(X))
    kill(worker)


def test_a_write_stops_the_writer_and_reaches_no_other_actor() -> None:
    program = export_tower()
    original = {name: t.detach().clone() for name, t in program.state_dict.items()}
    wrapper = ActorWrapper(program)
    writer, bystander = Loaded.remote(wrapper), Loaded.remote(wrapper)
    infos = ray.get([actor.apply.remote(inspect_program) for actor in (writer, bystander)])
    assert all(info["all_alias_store"] for info in infos)
    pid = ray.get(writer.apply.remote(process_id))
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(writer.apply.remote(write), timeout=120)
    assert_stopped_by_a_weight_write(pid)
    for worker in (bystander, Loaded.remote(wrapper)):
        seen = ray.get(worker.apply.remote(weights), timeout=120)
        assert seen.keys() == original.keys()
        assert all(torch.equal(seen[name], original[name]) for name in original)
        assert torch.equal(ray.get(worker.apply.remote(run_module, X)), program.module()(X))
        kill(worker)


def test_writable_load_is_a_private_copy() -> None:
    program = export_tower()
    wrapper = ActorWrapper(program)
    editor, bystander = Loaded.remote(wrapper, writable=True), Loaded.remote(wrapper)
    info = ray.get(editor.apply.remote(inspect_program))
    assert info["n_tensors"] and not info["any_alias_store"], "a writable load shares some tensors"
    assert ray.get(editor.apply.remote(write)) == "wrote"
    assert not torch.equal(ray.get(editor.apply.remote(weights))["proj.weight"], program.state_dict["proj.weight"])
    assert torch.equal(ray.get(bystander.apply.remote(weights))["proj.weight"], program.state_dict["proj.weight"])
    kill(editor, bystander)


def _hf_llama() -> tuple[nn.Module, ExportedProgram, torch.Tensor]:
    transformers = require("transformers", "a Hugging Face Llama exported")
    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()  # random weights, nothing downloaded
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))
    program = torch.export.export(model, (), {"input_ids": ids, "use_cache": False}, strict=False)
    return model, program, ids


def test_hugging_face_llama_in_actors_and_tasks() -> None:
    model, program, ids = _hf_llama()
    assert program.graph_signature.non_persistent_buffers  # rotary inv_freq
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
    expected = program.module()(input_ids=ids, use_cache=False).logits
    assert torch.equal(expected, eager)
    wrapper = ActorWrapper(program)
    workers = [Loaded.remote(wrapper) for _ in range(2)]
    for info in ray.get([w.apply.remote(inspect_program) for w in workers]):
        assert info["is_program"] and info["all_alias_store"] and info["module_alias_store"]
    for worker in workers:
        out = ray.get(worker.apply.remote(run_module, input_ids=ids, use_cache=False))
        assert torch.equal(out.logits, expected)
    assert torch.equal(TaskWrapper(program)(input_ids=ids, use_cache=False).logits, expected)
    kill(*workers)


# --- without the package -------------------------------------------------------------


@pytest.fixture
def without_export() -> Iterator[None]:
    """This process as if ``ray-zerocopy-export`` were not installed (restored after)."""
    with not_installed("ray_zerocopy_export"):
        yield


def test_without_the_package_wrapping_names_the_install(without_export: None) -> None:
    program = export_tower()
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'ray-zerocopy\[export\]'"):
        ActorWrapper(program)
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'ray-zerocopy\[export\]'"):
        TaskWrapper(program)
    # Eager models are unaffected.
    assert ActorWrapper(nn.Linear(4, 2).eval()).load()(torch.ones(1, 4)).shape == torch.Size([1, 2])
