"""Checkpoints shared straight from their files on a real local Ray.

Real transformers architectures (small configs, random weights, ``save_pretrained``)
load in actors and tasks equal to ``from_pretrained``; plain modules from safetensors and
``torch.save`` files; published by a driver that exits; bad input leaves nothing stored;
and the memory the feature exists for: the reading process makes no private copy, and
the node holds the weights once afterwards.
"""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import environment
import pytest
import ray
import scripts
import torch
from object_store import store_bytes_used, wait_for_store_at_most
from torch import nn

from ray_zerocopy import (
    ActorWrapper,
    Checkpoint,
    ModelWrapper,
    TaskWrapper,
    aliases_object_store,
    load_published,
    unpublish,
)
from ray_zerocopy.errors import CheckpointError, CheckpointNotFoundError
from ray_zerocopy_core.inspection import cached_file_bytes
from ray_zerocopy_core.process_memory import anonymous_memory_bytes

MIB = 1024**2
pytestmark = pytest.mark.usefixtures("ray_local")


def require_transformers() -> ModuleType:
    """transformers, for the tests that use real architectures (the others run without it)."""
    transformers = environment.require("transformers", "real architectures saved with save_pretrained")
    transformers.logging.set_verbosity_error()
    return transformers


def small_configs() -> dict[str, tuple[Any, Any, dict[str, torch.Tensor]]]:
    """name -> (model class, config, example inputs)."""
    t = require_transformers()
    ids = torch.tensor([[1, 5, 7, 2, 9]])
    return {
        "gpt2": (
            t.GPT2LMHeadModel,
            t.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=32),
            {"input_ids": ids},
        ),
        "bert": (
            t.BertModel,
            t.BertConfig(
                num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=128
            ),
            {"input_ids": ids},
        ),
        "llama": (
            t.LlamaForCausalLM,
            t.LlamaConfig(
                num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=128, vocab_size=128
            ),
            {"input_ids": ids},
        ),
        "t5": (
            t.T5ForConditionalGeneration,
            t.T5Config(num_layers=2, d_model=64, num_heads=4, d_ff=128, d_kv=16, vocab_size=128),
            {"input_ids": ids, "decoder_input_ids": torch.tensor([[0, 3, 4]])},
        ),
        "vit": (
            t.ViTModel,
            t.ViTConfig(
                num_hidden_layers=2,
                hidden_size=64,
                num_attention_heads=4,
                intermediate_size=128,
                image_size=32,
                patch_size=8,
            ),
            {"pixel_values": torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))},
        ),
    }


def saved(tmp_path: Path, name: str, sharded: bool = False) -> Path:
    cls, config, _ = small_configs()[name]
    torch.manual_seed(0)
    directory = tmp_path / name
    cls(config).save_pretrained(directory, max_shard_size="40KB" if sharded else "5GB")
    return directory


def main_output(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output.last_hidden_state


@ray.remote(num_cpus=0.5)
def forward_in_task(wrapper: ActorWrapper, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool, bool]:
    model = wrapper.load()
    with torch.no_grad():
        out = main_output(model(**inputs))
    tied = getattr(model, "lm_head", None) is None or model.lm_head.weight is model.get_input_embeddings().weight
    return out, all(aliases_object_store(p) for p in model.parameters()), tied


@pytest.mark.parametrize("name", ["gpt2", "bert", "llama", "t5", "vit"])
def test_transformers_checkpoint_equals_from_pretrained_in_actors_and_tasks(
    tmp_path: Path, name: str, one_thread: None
) -> None:
    cls, config, inputs = small_configs()[name]
    directory = saved(tmp_path, name, sharded=name == "llama")
    if name == "llama":
        assert (directory / "model.safetensors.index.json").exists()
    reference = cls.from_pretrained(directory).eval()
    with torch.no_grad():
        expected = main_output(reference(**inputs))

    wrapper = ActorWrapper.from_checkpoint(Checkpoint(directory, cls))
    out, aliased, tied = ray.get(forward_in_task.remote(wrapper, inputs))
    assert torch.equal(out, expected)
    assert aliased
    if getattr(config, "tie_word_embeddings", False) and hasattr(reference, "lm_head"):
        assert reference.lm_head.weight is reference.get_input_embeddings().weight
        assert tied

    task_wrapper = TaskWrapper.from_checkpoint(Checkpoint(directory, cls))
    with torch.no_grad():
        assert torch.equal(main_output(task_wrapper(**inputs)), expected)


def test_bfloat16_conversion_equals_from_pretrained_with_dtype(tmp_path: Path, one_thread: None) -> None:
    cls, _, inputs = small_configs()["llama"]
    directory = saved(tmp_path, "llama")
    reference = cls.from_pretrained(directory, dtype=torch.bfloat16).eval()
    model = ActorWrapper.from_checkpoint(Checkpoint(directory, "AutoModelForCausalLM", dtype=torch.bfloat16)).load()
    got, want = model.state_dict(), reference.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


def test_fused_experts_conversion_equals_from_pretrained(tmp_path: Path, one_thread: None) -> None:
    """Mixtral's files keep one tensor per expert; transformers 5 fuses them on load (bytes change)."""
    t = require_transformers()
    config = t.MixtralConfig(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=96,
        vocab_size=128,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    torch.manual_seed(5)
    t.MixtralForCausalLM(config).save_pretrained(tmp_path)
    reference = t.MixtralForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    model = ray.get(
        forward_in_task.remote(
            ActorWrapper.from_checkpoint(Checkpoint(tmp_path, "AutoModelForCausalLM")), {"input_ids": ids}
        )
    )
    with torch.no_grad():
        assert torch.equal(model[0], reference(input_ids=ids).logits)
    assert model[1]  # converted tensors alias the store too


class Classifier(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU())
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.mark.parametrize("form", ["model.safetensors", "model.pt"])
def test_plain_module_from_safetensors_and_torch_save(tmp_path: Path, form: str, one_thread: None) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(1)
    reference = Classifier().eval()
    path = tmp_path / form
    if form.endswith(".safetensors"):
        save_file(reference.state_dict(), path)
    else:
        torch.save(reference.state_dict(), path)
    x = torch.randn(3, 32)
    wrapper = ModelWrapper.from_checkpoint(Checkpoint(path, Classifier), mode="actor")
    out, aliased, _ = ray.get(forward_in_task.remote(wrapper, {"x": x}))
    assert torch.equal(out, reference(x)) and aliased


class Pipeline:
    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.threshold = 0.5

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x) > self.threshold


def test_checkpoint_as_a_pipeline_attribute(tmp_path: Path, one_thread: None) -> None:
    torch.manual_seed(2)
    reference = Classifier().eval()
    torch.save(reference.state_dict(), tmp_path / "c.pt")
    wrapper = ActorWrapper(Pipeline(Checkpoint(tmp_path / "c.pt", Classifier)))
    assert wrapper.model_names == ["encoder"]
    pipeline = wrapper.load()
    x = torch.randn(4, 32)
    assert torch.equal(pipeline(x), reference(x) > 0.5)
    assert aliases_object_store(pipeline.encoder.head.weight)


def test_ray_train_checkpoint(tmp_path: Path, one_thread: None) -> None:
    from ray.train import Checkpoint as TrainCheckpoint

    directory = saved(tmp_path, "gpt2")
    cls, _, inputs = small_configs()["gpt2"]
    reference = cls.from_pretrained(directory).eval()
    model = ActorWrapper.from_checkpoint(Checkpoint(TrainCheckpoint.from_directory(str(directory)), cls)).load()
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, reference(**inputs).logits)


@pytest.fixture
def published() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        unpublish(name, missing_ok=True)


def test_publish_a_checkpoint_from_a_driver_that_exits(tmp_path: Path, published: list[str], one_thread: None) -> None:
    directory = saved(tmp_path, "gpt2")
    published.append("ckpt-gpt2")
    script = tmp_path / "publisher.py"
    # The publisher names the class as a string: it never imports transformers nor reads the files.
    script.write_text(
        textwrap.dedent(
            f"""
            import ray, sys
            ray.init(logging_level="ERROR")
            from ray_zerocopy import Checkpoint, publish
            print(publish("ckpt-gpt2", Checkpoint({str(directory)!r}, "GPT2LMHeadModel")))
            print("transformers imported:", "transformers" in sys.modules)
            ray.shutdown()
            """
        )
    )
    out = scripts.run_driver(script, timeout=300, label="checkpoint publisher")
    assert "'ckpt-gpt2' (v1" in out and "transformers imported: False" in out
    cls, _, inputs = small_configs()["gpt2"]
    model = load_published("ckpt-gpt2")
    assert aliases_object_store(model.lm_head.weight) and model.lm_head.weight is model.transformer.wte.weight
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, cls.from_pretrained(directory).eval()(**inputs).logits)


@pytest.mark.parametrize(
    "breakage",
    ["missing path", "unexpected key", "missing key", "shape", "truncated", "missing shard", "not a module", "pickle"],
)
def test_bad_checkpoints_raise_clearly_and_store_nothing(tmp_path: Path, breakage: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(3)
    state = Classifier().state_dict()
    path = tmp_path / "model.safetensors"
    model: Any = Classifier
    error: type[Exception] = CheckpointError
    needles = ["model.safetensors"]
    if breakage == "missing path":
        path, error, needles = tmp_path / "absent.safetensors", CheckpointNotFoundError, ["absent.safetensors"]
    elif breakage == "unexpected key":
        save_file({**state, "extra.bias": torch.zeros(2)}, path)
        needles.append("'extra.bias'")
    elif breakage == "missing key":
        save_file({k: v for k, v in state.items() if k != "head.bias"}, path)
        needles.append("'head.bias'")
    elif breakage == "shape":
        save_file({**state, "head.weight": torch.zeros(3, 64)}, path)
        needles += ["'head.weight'", "[3, 64]"]
    elif breakage == "truncated":
        save_file(state, path)
        path.write_bytes(path.read_bytes()[:-64])
        needles.append("truncated")
    elif breakage == "missing shard":
        save_file(state, tmp_path / "part-1.safetensors")
        (tmp_path / "model.safetensors.index.json").write_text(
            '{"weight_map": {"head.weight": "part-1.safetensors", "head.bias": "part-2.safetensors"}}'
        )
        path, error, needles = tmp_path, CheckpointNotFoundError, ["part-2.safetensors", "'head.bias'"]
    elif breakage == "not a module":
        save_file(state, path)
        model, needles = (lambda: "no module"), ["returned a str"]
    elif breakage == "pickle":
        path = tmp_path / "model.pt"
        torch.save({"net": Classifier()}, path)
        needles = ["model.pt", "weights_only=True"]
    before = store_bytes_used()
    with pytest.raises(error) as caught:
        ActorWrapper.from_checkpoint(Checkpoint(path, model))
    for needle in needles:
        assert needle in str(caught.value), str(caught.value)
    gc.collect()
    assert wait_for_store_at_most(before) <= before, "a failed checkpoint left bytes in the object store"


# --- memory: the point of the feature --------------------------------------------------


class Wide(nn.Module):
    """About ``mib`` MiB of float32 weights in 16 equal layers."""

    def __init__(self, mib: int = 256) -> None:
        super().__init__()
        side = int((mib * MIB / 4 / 16) ** 0.5)
        self.layers = nn.ModuleList(nn.Linear(side, side, bias=False) for _ in range(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def stored_bytes(model: nn.Module, dtype: torch.dtype | None = None) -> tuple[int, int]:
    """The weight bytes of ``model`` stored as ``dtype`` (each tensor's own if None), and its largest tensor's.

    Counted here from the shapes, not taken from the library, so that a stored size can be
    checked against it.
    """
    sizes = [t.numel() * (dtype or t.dtype).itemsize for t in model.state_dict().values()]
    return sum(sizes), max(sizes)


def paths_held_under(folder: str) -> list[str]:
    """Files under ``folder`` this process has open or mapped (a removed file still shows, "(deleted)")."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # an fd closed meanwhile
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(folder + os.sep):
                held.append(target)
    with open("/proc/self/maps") as maps:
        held += [line.split(maxsplit=5)[-1].strip() for line in maps if folder + os.sep in line]
    return held


@ray.remote(num_cpus=0.5)
class Sharer:
    """Shares a checkpoint while a thread records this process's peak anonymous memory and spool files."""

    def share(self, path: str, mib: int, warm_up_path: str, dtype: torch.dtype | None, spool: str) -> dict[str, Any]:
        """Share ``path``; the growth of this process's anonymous memory, and the spool files seen."""
        tempfile.tempdir = spool  # the conversion spool's folder (tempfile.gettempdir()): watched below
        ActorWrapper.from_checkpoint(Checkpoint(warm_up_path, lambda: Wide(1), dtype=dtype)).release()
        gc.collect()  # imports and first-use costs are paid: what grows below is the sharing
        baseline = anonymous_memory_bytes()
        assert baseline is not None, "the driver checked that this kernel reports Pss_Anon"
        peak, spooled = [baseline], set()
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], anonymous_memory_bytes() or 0)
                spooled.update(paths_held_under(spool))
                time.sleep(0.002)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            self.wrapper = ActorWrapper.from_checkpoint(Checkpoint(path, lambda: Wide(mib), dtype=dtype))
        finally:
            done.set()
            watcher.join()
        return {
            "growth": peak[0] - baseline,
            "nbytes": self.wrapper.nbytes,
            "spooled": sorted(spooled),
            "still_held": paths_held_under(spool),
            "left_in_spool": os.listdir(spool),
        }

    def last_weight_rows(self) -> torch.Tensor:
        return self.wrapper.load().layers[-1].weight[-4:].clone()


def free_shm_bytes() -> int:
    usage = shutil.disk_usage("/dev/shm")
    return usage.free


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["as-stored", "to-bfloat16"])
def test_sharing_a_checkpoint_makes_no_private_copy_and_the_node_holds_it_once(
    tmp_path: Path, dtype: torch.dtype | None
) -> None:
    from safetensors.torch import save_file

    environment.anonymous_memory_or_skip()
    mib = 256
    if free_shm_bytes() < 3 * mib * MIB:  # the store (2 GiB cap) lives in /dev/shm
        pytest.skip(
            f"needs {3 * mib} MiB free in /dev/shm for a {mib} MiB store object; it has {free_shm_bytes() // MIB} MiB"
        )
    torch.manual_seed(4)
    model = Wide(mib)
    expected, largest = stored_bytes(model, dtype)
    path = tmp_path / "wide.safetensors"
    save_file(model.state_dict(), path)
    save_file(Wide(1).state_dict(), tmp_path / "small.safetensors")
    expected_rows = model.layers[-1].weight[-4:].detach().to(dtype or torch.float32)
    del model
    gc.collect()
    cached_before = cached_file_bytes(path)
    spool = tmp_path / "spool"
    spool.mkdir()

    before = store_bytes_used()
    sharer = Sharer.remote()
    report = ray.get(sharer.share.remote(str(path), mib, str(tmp_path / "small.safetensors"), dtype, str(spool)))
    # Objects released just before (the warm-up model) leave the store a moment later: a second
    # copy of the model would never leave, and fails this after the wait.
    in_store = wait_for_store_at_most(before + expected + MIB, timeout=15) - before
    cached_after = cached_file_bytes(path)
    # A private copy of even one tensor at a time would show: the bound is half the largest.
    assert report["growth"] < largest / 2, (
        f"the reading process grew by {report['growth'] / MIB:.1f} MiB; its largest tensor is {largest / MIB:.0f} MiB"
    )
    assert report["nbytes"] == expected, "the wrapper's count of its bytes differs from the model's shapes"
    assert expected <= in_store <= expected + MIB, f"the store grew by {in_store} bytes for {expected} of weights"
    if dtype is None:
        assert report["spooled"] == [], "nothing to convert, yet the conversion spool was used"
    else:
        assert report["spooled"], "the conversion never opened its spool in the watched folder"
    assert report["still_held"] == [] and report["left_in_spool"] == [], f"the conversion spool outlived it: {report}"
    assert torch.equal(ray.get(sharer.last_weight_rows.remote()), expected_rows)
    ray.kill(sharer)
    assert wait_for_store_at_most(before + MIB) <= before + MIB, "the stored model outlived its owner"

    cannot_drop = environment.page_cache_stays(tmp_path)
    if cannot_drop:
        pytest.skip(cannot_drop)
    assert cached_before > 0.5 * path.stat().st_size  # just written: in the page cache
    assert in_store + cached_after <= 1.1 * expected, (
        f"store +{in_store / MIB:.0f} MiB, file cache {cached_after / MIB:.0f} MiB: the node holds the weights twice"
    )


class RecordingFactory:
    """Builds ``Wide(mib)``, first writing to ``record`` the process it runs in and its anonymous memory then."""

    def __init__(self, mib: int, record: str) -> None:
        self.mib = mib
        self.record = record

    def __call__(self) -> nn.Module:
        partial = f"{self.record}.partial"
        Path(partial).write_text(f"{os.getpid()} {anonymous_memory_bytes()}")
        os.replace(partial, self.record)  # whole, or not there yet
        return Wide(self.mib)


def test_publishing_a_checkpoint_never_stores_a_second_copy(tmp_path: Path, published: list[str]) -> None:
    """The loader task that reads the files holds no private copy, and the store holds one copy."""
    from safetensors.torch import save_file

    from ray_zerocopy import publish

    environment.anonymous_memory_or_skip()
    mib = 128
    torch.manual_seed(6)
    model = Wide(mib)
    expected, largest = stored_bytes(model)
    save_file(model.state_dict(), tmp_path / "wide.safetensors")
    del model
    published.append("ckpt-wide")
    record = tmp_path / "loader"
    gc.collect()
    before = store_bytes_used()
    store_peak, loader = [before], {"pid": 0, "baseline": 0, "peak": 0}
    done = threading.Event()

    def watch() -> None:  # the store, and the loader task's process once its factory has said which it is
        while not done.is_set():
            store_peak[0] = max(store_peak[0], store_bytes_used())
            if not loader["pid"] and record.exists():
                loader["pid"], loader["baseline"] = map(int, record.read_text().split())
            if loader["pid"]:
                loader["peak"] = max(loader["peak"], anonymous_memory_bytes(loader["pid"]) or 0)
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        info = publish("ckpt-wide", Checkpoint(tmp_path / "wide.safetensors", RecordingFactory(mib, str(record))))
    finally:
        done.set()
        watcher.join()
    assert info.built_by == "loader" and info.nbytes == expected
    assert loader["pid"] not in (0, os.getpid()), "the checkpoint was not read in a loader task"
    growth = loader["peak"] - loader["baseline"]
    assert growth < largest / 2, (
        f"the loader task grew by {growth / MIB:.1f} MiB; the largest tensor is {largest / MIB:.0f} MiB"
    )
    assert store_peak[0] - before <= expected + MIB, f"the store peaked at +{(store_peak[0] - before) / MIB:.1f} MiB"
    assert expected <= wait_for_store_at_most(before + expected + MIB, timeout=15) - before <= expected + MIB
    assert aliases_object_store(load_published("ckpt-wide").layers[0].weight)
    cannot_drop = environment.page_cache_stays(tmp_path)
    if cannot_drop:
        pytest.skip(cannot_drop)
    assert cached_file_bytes(tmp_path / "wide.safetensors") < 0.1 * expected
