"""Quantized models on a real local Ray: torchao's tensor subclasses shared zero-copy.

Each torchao weight kind (int8 weight-only, int8 dynamic activation + int8 weight, int4
weight-only in its CPU layout, float8 weight-only) answers bit for bit like the quantized
original on one thread, its inner tensors (``qdata``, ``scale``...) map the object store,
a quantized weight held by two modules is one object in the worker, a write stops the
writer only, ``writable=True`` gives private copies; a transformers Llama quantized with
torchao; checkpoints of quantized models (``save_pretrained`` with a ``TorchAoConfig``,
``torch.save`` of the state dict) shared from their files with no private copy; an
``ExportedProgram`` of a quantized model; and ``torch.ao.quantization`` refused with the
torchao route. Skipped only where torchao is not installed (required under nox).
"""

from __future__ import annotations

import gc
import json
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import environment
import pytest
import ray
import torch
from environment import assert_stopped_by_a_weight_write
from models import MIB, Loaded, process_id
from object_store import store_bytes_used, wait_for_store_at_most
from torch import nn

from ray_zerocopy import ActorWrapper, Checkpoint
from ray_zerocopy.errors import UnsupportedModelError
from ray_zerocopy_core.process_memory import anonymous_memory_bytes

pytestmark = pytest.mark.usefixtures("ray_local")

#: The weight kinds of the issue: torchao's config, the dtype of the float model, the tensor type it makes.
KINDS = {
    "int8-weight-only": ("Int8WeightOnlyConfig", torch.float32, "Int8Tensor"),
    "int8-dynamic-activation": ("Int8DynamicActivationInt8WeightConfig", torch.float32, "Int8Tensor"),
    "int4-weight-only-cpu": ("PrototypeInt4WeightOnlyConfig", torch.bfloat16, "Int4OpaqueTensor"),
    "float8-weight-only": ("Float8WeightOnlyConfig", torch.float32, "Float8Tensor"),
}


@pytest.fixture(scope="module")
def torchao() -> ModuleType:
    """torchao, which quantizes every model of this module."""
    return environment.require("torchao", "quantized models: torchao's tensor subclasses")


def config(kind: str) -> Any:
    """A fresh torchao config for ``kind`` (int4's CPU layout lives under torchao.prototype in 0.18)."""
    import torchao.quantization as quantization

    name = KINDS[kind][0]
    if name == "PrototypeInt4WeightOnlyConfig":
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

        return PrototypeInt4WeightOnlyConfig(group_size=32)
    return getattr(quantization, name)()


def quantized_mlp(kind: str = "int8-weight-only", seed: int = 0) -> nn.Sequential:
    """A small MLP quantized with torchao as ``kind`` says (sizes fit every layout: multiples of 32)."""
    from torchao.quantization import quantize_

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64)).to(KINDS[kind][1]).eval()
    quantize_(model, config(kind))
    return model


def inputs(kind: str = "int8-weight-only", rows: int = 4) -> torch.Tensor:
    return torch.randn(rows, 256, generator=torch.Generator().manual_seed(3)).to(KINDS[kind][1])


def where_inner_tensors_lie(model: Any) -> dict[str, tuple[str, bool]]:
    """For every plain tensor of ``model`` (a subclass's inner ones under ``name.inner``): its holder's type, and
    whether it maps the object store (run in an actor through ``Loaded.apply``)."""
    from ray_zerocopy_core.inspection import aliases_object_store
    from ray_zerocopy_core.plugin import flatten_subclass, is_flattenable

    found = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if is_flattenable(tensor):
            inner, _ = flatten_subclass(tensor)
            for attribute, part in inner.items():
                found[f"{name}.{attribute}"] = (type(tensor).__name__, aliases_object_store(part))
        else:
            found[name] = (type(tensor).__name__, aliases_object_store(tensor))
    return found


def parameters_alias_the_store(model: Any) -> bool:
    """``aliases_object_store`` of every parameter, a quantized one taken whole (run in an actor)."""
    from ray_zerocopy import aliases_object_store

    return all(aliases_object_store(p) for p in model.parameters())


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_torchao_kind_answers_bit_for_bit_from_the_object_store(
    torchao: ModuleType, kind: str, one_thread: None
) -> None:
    model = quantized_mlp(kind)
    x = inputs(kind)
    with torch.no_grad():
        expected = model(x)
    wrapper = ActorWrapper(model)
    quantized_bytes = sum(
        part.nbytes
        for layer in (model[0], model[2])
        for part in [*(getattr(layer.weight, n) for n in layer.weight.__tensor_flatten__()[0]), layer.bias]
    )
    assert wrapper.nbytes == quantized_bytes  # the inner tensors, not a float copy of the weights
    worker = Loaded.remote(wrapper)
    assert torch.equal(ray.get(worker.call.remote(x)), expected)
    lie = ray.get(worker.apply.remote(where_inner_tensors_lie))
    assert {holder for holder, _ in lie.values()} == {KINDS[kind][2], "Parameter"}
    assert all(in_store for _, in_store in lie.values()), lie
    assert {"0.weight.qdata", "2.weight.qdata"} <= set(lie)
    assert ray.get(worker.apply.remote(parameters_alias_the_store))


class TwoHeads(nn.Module):
    """Two heads holding one quantized weight (tied after quantization, as users tie them)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(256, 512)
        self.left = nn.Linear(512, 64)
        self.right = nn.Linear(512, 64)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.relu(self.body(x))
        return self.left(hidden), self.right(hidden)


def heads_tied(model: Any) -> tuple[bool, str]:
    return model.right.weight is model.left.weight, type(model.left.weight).__name__


def test_a_quantized_weight_held_twice_is_stored_once_and_one_object_again(
    torchao: ModuleType, one_thread: None
) -> None:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    model = TwoHeads().eval()
    quantize_(model, Int8WeightOnlyConfig())
    model.right.weight = model.left.weight
    untied = TwoHeads().eval()
    quantize_(untied, Int8WeightOnlyConfig())
    once = model.left.weight.qdata.nbytes + model.left.weight.scale.nbytes + model.left.weight.zero_point.nbytes
    wrapper = ActorWrapper(model)
    assert wrapper.nbytes + once == ActorWrapper(untied).nbytes
    worker = Loaded.remote(wrapper)
    assert ray.get(worker.apply.remote(heads_tied)) == (True, "Int8Tensor")
    with torch.no_grad():
        expected = model(inputs())
    assert all(torch.equal(got, want) for got, want in zip(ray.get(worker.call.remote(inputs())), expected))


def write_quantized_weight(model: Any) -> str:
    """Change a quantized weight's int8 values in place (run in an actor)."""
    with torch.no_grad():
        model[0].weight.qdata.add_(1)
    return "wrote"


def test_a_write_to_a_quantized_weight_stops_the_writer_only(torchao: ModuleType) -> None:
    model = quantized_mlp()
    x = inputs()
    with torch.no_grad():
        expected = model(x)
    wrapper = ActorWrapper(model)
    writer, bystander = Loaded.remote(wrapper), Loaded.remote(wrapper)
    pid = ray.get(writer.apply.remote(process_id))
    with pytest.raises(ray.exceptions.ActorDiedError):
        ray.get(writer.apply.remote(write_quantized_weight), timeout=120)
    assert_stopped_by_a_weight_write(pid)
    for worker in (bystander, Loaded.remote(wrapper)):
        assert torch.allclose(ray.get(worker.call.remote(x)), expected)


def test_a_writable_load_gets_private_inner_tensors(torchao: ModuleType, one_thread: None) -> None:
    model = quantized_mlp()
    x = inputs()
    with torch.no_grad():
        expected = model(x)
    wrapper = ActorWrapper(model)
    editor, bystander = Loaded.remote(wrapper, writable=True), Loaded.remote(wrapper)
    lie = ray.get(editor.apply.remote(where_inner_tensors_lie))
    assert not any(in_store for _, in_store in lie.values()), lie
    assert ray.get(editor.apply.remote(write_quantized_weight)) == "wrote"
    assert not torch.equal(ray.get(editor.call.remote(x)), expected)
    assert torch.equal(ray.get(bystander.call.remote(x)), expected)


# --- transformers --------------------------------------------------------------------------


def small_llama() -> Any:
    transformers = environment.require("transformers", "a transformers model quantized with torchao")
    transformers.logging.set_verbosity_error()
    config = transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=128
    )
    torch.manual_seed(0)
    return transformers, transformers.LlamaForCausalLM(config).eval()


TOKENS = torch.tensor([[1, 5, 7, 2, 9]])


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(TOKENS).logits


def test_a_transformers_llama_quantized_with_torchao(torchao: ModuleType, one_thread: None) -> None:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    _, model = small_llama()
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    expected = logits(model)
    worker = Loaded.remote(ActorWrapper(model))
    assert torch.equal(ray.get(worker.apply.remote(logits)), expected)
    lie = ray.get(worker.apply.remote(where_inner_tensors_lie))
    assert lie["model.layers.0.self_attn.q_proj.weight.qdata"] == ("Int8Tensor", True)
    assert all(in_store for _, in_store in lie.values()), lie


# --- checkpoints ---------------------------------------------------------------------------


def test_a_save_pretrained_torchao_checkpoint_equals_from_pretrained(
    torchao: ModuleType, tmp_path: Path, one_thread: None
) -> None:
    from torchao.quantization import Int8WeightOnlyConfig

    transformers, model = small_llama()
    model.save_pretrained(tmp_path / "float")
    quantized = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig())
    )
    quantized.save_pretrained(tmp_path / "int8")
    header = json.loads((tmp_path / "int8" / "config.json").read_text())
    assert header["quantization_config"]["quant_method"] == "torchao"
    reference = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "int8").eval()
    expected = logits(reference)

    wrapper = ActorWrapper.from_checkpoint(Checkpoint(tmp_path / "int8", transformers.LlamaForCausalLM))
    worker = Loaded.remote(wrapper)
    assert torch.equal(ray.get(worker.apply.remote(logits)), expected)
    lie = ray.get(worker.apply.remote(where_inner_tensors_lie))
    assert lie["model.layers.1.mlp.down_proj.weight.qdata"] == ("Int8Tensor", True)
    assert all(in_store for _, in_store in lie.values()), lie


def test_a_torch_saved_quantized_state_dict_through_a_checkpoint(
    torchao: ModuleType, tmp_path: Path, one_thread: None
) -> None:
    model = quantized_mlp("int8-dynamic-activation")
    torch.save(model.state_dict(), tmp_path / "int8.pt")
    x = inputs()
    with torch.no_grad():
        expected = model(x)
    factory = Builder()
    worker = Loaded.remote(ActorWrapper.from_checkpoint(Checkpoint(tmp_path / "int8.pt", factory)))
    assert torch.equal(ray.get(worker.call.remote(x)), expected)
    assert all(in_store for _, in_store in ray.get(worker.apply.remote(where_inner_tensors_lie)).values())


def test_a_quantized_checkpoint_refuses_dtype_and_a_model_it_does_not_fit(torchao: ModuleType, tmp_path: Path) -> None:
    from ray_zerocopy.errors import CheckpointError

    torch.save(quantized_mlp().state_dict(), tmp_path / "int8.pt")
    before = store_bytes_used()
    with pytest.raises(CheckpointError, match=r"'0\.weight' is a Int8Tensor.*dtype=torch\.bfloat16.*Drop dtype="):
        ActorWrapper.from_checkpoint(Checkpoint(tmp_path / "int8.pt", Builder(), dtype=torch.bfloat16))
    wider = lambda: nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 64))  # noqa: E731
    with pytest.raises(CheckpointError, match=r"'0\.weight'.*Int8Tensor of shape \[512, 256\].*\[1024, 256\]"):
        ActorWrapper.from_checkpoint(Checkpoint(tmp_path / "int8.pt", wider))
    assert wait_for_store_at_most(before) <= before, "a refused checkpoint left bytes in the object store"


class Builder:
    """Builds the float MLP that :func:`quantized_mlp` quantizes (a checkpoint's factory)."""

    def __call__(self) -> nn.Module:
        return nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 64))


class Wide(nn.Module):
    """``layers`` float32 layers of ``side`` x ``side``, built without filling them (on meta under a checkpoint)."""

    def __init__(self, side: int = 4096, layers: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(side, side, bias=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def wide_int8(side: int, layers: int) -> nn.Module:
    """A :class:`Wide` with small random weights, quantized int8 weight-only."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    with torch.device("meta"):
        model = Wide(side, layers)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.normal_(0, 0.02, generator=generator)
    quantize_(model, Int8WeightOnlyConfig())
    return model.eval()


def save_quantized(model: nn.Module, path: Path, form: str) -> None:
    """Save a quantized state dict as ``torch.save`` does, or in torchao's safetensors layout (save_pretrained's)."""
    if form == "torch.save":
        torch.save(model.state_dict(), path)
        return
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    tensors, metadata = flatten_tensor_state_dict(model.state_dict())
    save_file(tensors, str(path), metadata=metadata)


@ray.remote(num_cpus=0.5)
class QuantizedSharer:
    """Shares a quantized checkpoint while a thread records this process's peak anonymous memory."""

    def share(self, path: str, warm_up: str, side: int, layers: int) -> dict[str, int]:
        ActorWrapper.from_checkpoint(Checkpoint(warm_up, WideFactory(64, 1))).release()
        gc.collect()  # imports (torchao included) and first-use costs are paid: what grows below is the sharing
        baseline = anonymous_memory_bytes()
        assert baseline is not None, "the driver checked that this kernel reports Pss_Anon"
        peak = [baseline]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], anonymous_memory_bytes() or 0)
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            self.wrapper = ActorWrapper.from_checkpoint(Checkpoint(path, WideFactory(side, layers)))
        finally:
            done.set()
            watcher.join()
        return {"growth": peak[0] - baseline, "nbytes": self.wrapper.nbytes}

    def first_rows(self) -> torch.Tensor:
        return self.wrapper.load().layers[-1].weight.qdata[:4].clone()


class WideFactory:
    """Builds ``Wide(side, layers)`` (a picklable checkpoint factory)."""

    def __init__(self, side: int, layers: int) -> None:
        self.side, self.layers = side, layers

    def __call__(self) -> nn.Module:
        return Wide(self.side, self.layers)


@pytest.mark.parametrize("form", ["torch.save", "safetensors"])
def test_sharing_a_quantized_checkpoint_makes_no_private_copy(torchao: ModuleType, tmp_path: Path, form: str) -> None:
    environment.anonymous_memory_or_skip()
    side, layers = 4096, 4  # 256 MiB as float32, 64 MiB of int8 in 16 MiB tensors
    model = wide_int8(side, layers)
    suffix = ".pt" if form == "torch.save" else ".safetensors"
    path, warm_up = tmp_path / f"int8{suffix}", tmp_path / f"small{suffix}"
    save_quantized(model, path, form)
    save_quantized(wide_int8(64, 1), warm_up, form)
    expected_rows = model.layers[-1].weight.qdata[:4].clone()
    parts = [getattr(layer.weight, n) for layer in model.layers for n in layer.weight.__tensor_flatten__()[0]]
    expected, largest = sum(p.nbytes for p in parts), max(p.nbytes for p in parts)
    del model, parts
    gc.collect()

    before = store_bytes_used()
    sharer = QuantizedSharer.remote()
    report = ray.get(sharer.share.remote(str(path), str(warm_up), side, layers))
    # Objects released just before (the warm-up model) leave the store a moment later: a second
    # copy of the model would never leave, and fails this after the wait.
    in_store = wait_for_store_at_most(before + expected + MIB, timeout=15) - before
    # A private copy of even one quantized tensor at a time would show: the bound is half the largest.
    assert report["growth"] < largest / 2, (
        f"the reading process grew by {report['growth'] / MIB:.1f} MiB; its largest tensor is {largest / MIB:.0f} MiB"
    )
    assert report["nbytes"] == expected, "the stored bytes differ from the quantized tensors' own"
    assert expected <= in_store <= expected + MIB, f"the store grew by {in_store} bytes for {expected} of weights"
    assert torch.equal(ray.get(sharer.first_rows.remote()), expected_rows)
    ray.kill(sharer)
    assert wait_for_store_at_most(before + MIB) <= before + MIB, "the stored model outlived its owner"


# --- torch.export and torch.ao.quantization --------------------------------------------------


def program_weights(program: Any) -> dict[str, tuple[str, bool]]:
    return where_inner_tensors_lie(program.module())


@pytest.mark.parametrize("kind", ["int8-weight-only", "int4-weight-only-cpu"])
def test_an_exported_quantized_program_shares_zero_copy(torchao: ModuleType, kind: str, one_thread: None) -> None:
    environment.require("ray_zerocopy_export", "the torch.export backend")
    model = quantized_mlp(kind)
    x = inputs(kind)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        expected = model(x)
    worker = Loaded.remote(ActorWrapper(program))
    assert torch.equal(ray.get(worker.call.remote(x)), expected)
    lie = ray.get(worker.apply.remote(program_weights))
    assert lie["0.weight.qdata"] == (KINDS[kind][2], True)
    assert all(in_store for _, in_store in lie.values()), lie


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")  # torch.ao.quantization's own
def test_torch_ao_dynamic_quantization_is_refused_with_the_torchao_route() -> None:
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    quantized = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    before = store_bytes_used()
    with pytest.raises(UnsupportedModelError, match=r"torch\.ao\.quantization.*Int8DynamicActivationInt8WeightConfig"):
        ActorWrapper(quantized)
    assert store_bytes_used() <= before  # nothing stored (an earlier test's objects may still be leaving)
