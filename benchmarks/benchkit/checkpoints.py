"""From checkpoint files to a stored model: ``Checkpoint`` against what users do today.

Every method starts from the same files on disk, out of the page cache, and ends with a
wrapper whose weights are in the object store, in its own fresh driver process (run as
``python -m benchkit.checkpoints '<json request>'``, connected to the benchmark's Ray)
that first runs the same method once on a tiny checkpoint, so imports and first-use
costs are paid before the timer starts:

* ``floor``: one read of the safetensors files (``readinto`` 64 MiB at a time) plus one copy
  of their bytes into fresh memory (nothing is kept): what any reader must do at least;
* ``plain``: the plain PyTorch path: build the module (random init), then
  ``load_state_dict(torch.load(file))`` of a ``torch.save``d state dict, then ``ActorWrapper``;
* ``from_pretrained``: transformers' ``from_pretrained(directory)``, then ``ActorWrapper``;
* ``checkpoint``: ``ActorWrapper.from_checkpoint(Checkpoint(directory, AutoModelForCausalLM))``;
* ``checkpoint_pt``: the same from the ``torch.save``d file, the module built by a factory.

Measured per method: seconds from the files to the stored model; the peak growth of the
process's anonymous memory (``Pss_Anon``: its private copies, not the file pages it maps),
sampled every 5 ms; the node's memory afterwards, the model dropped and the wrapper kept:
the object store's growth, plus the files' pages in the page cache, plus that process's
anonymous growth; and the peak of that sum while sharing, sampled every 0.1 s.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.memory import PeakSampler, object_store_bytes_used
from ray_zerocopy_core.checkpoint.files import drop_page_cache
from ray_zerocopy_core.inspection import cached_file_bytes
from ray_zerocopy_core.process_memory import anonymous_memory_bytes as read_anonymous
from ray_zerocopy_core.process_memory import trim_heap

MIB = 1024**2
GPT2_POSITIONS = 1024
GPT2_VOCAB = 50257
#: Methods in the order they run; the targets compare ``checkpoint`` with the others.
METHODS = ("floor", "plain", "from_pretrained", "checkpoint", "checkpoint_pt")
LABELS = {
    "floor": "floor: one read of the files + one copy of their bytes",
    "plain": "plain PyTorch: build, load_state_dict(torch.load(...)), ActorWrapper",
    "from_pretrained": "transformers from_pretrained + ActorWrapper",
    "checkpoint": "ActorWrapper.from_checkpoint(Checkpoint(directory, AutoModelForCausalLM))",
    "checkpoint_pt": "ActorWrapper.from_checkpoint(Checkpoint(state_dict.pt, factory))",
}
#: The file of the ``torch.save``d state dict, next to the ``save_pretrained`` directory.
STATE_DICT = "state_dict.pt"


def anonymous_memory_bytes() -> int:
    """This process's anonymous memory (``Pss_Anon``); stops the benchmark where the kernel has none."""
    value = read_anonymous()
    if value is None:
        raise SystemExit(
            f"this kernel ({platform.release()}) reports no Pss_Anon in /proc/self/smaps_rollup, so the "
            "private memory of sharing a checkpoint cannot be measured: run the benchmark on Linux 5.7 or later"
        )
    return value


def gpt2_config(size_mib: int) -> Any:
    """A GPT-2 configuration (tied head) with about ``size_mib`` MiB of float32 weights.

    Below 16 MiB: a tiny model (small vocabulary), for warming up a process.
    """
    from transformers import GPT2Config

    if size_mib < 16:
        return GPT2Config(
            n_embd=64, n_layer=1, n_head=1, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0
        )
    width = 256 if size_mib < 256 else 768 if size_mib < 4096 else 4096
    per_layer = 12 * width * width + 13 * width
    layers = max(1, round((size_mib * MIB / 4 - (GPT2_VOCAB + GPT2_POSITIONS + 2) * width) / per_layer))
    return GPT2Config(
        n_embd=width, n_layer=layers, n_head=width // 64, vocab_size=GPT2_VOCAB, n_positions=GPT2_POSITIONS
    )


def write_checkpoint(directory: Path, size_mib: int, *, state_dict: bool = True) -> int:
    """``save_pretrained`` a random GPT-2-like model of ``size_mib`` MiB into ``directory``
    (sharded above 2 GB); with ``state_dict``, also ``torch.save`` its state dict beside it.

    Returns the weight bytes. Every file is synced and dropped from the page cache.
    """
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(gpt2_config(size_mib)).eval()
    model.save_pretrained(directory, max_shard_size="2GB")
    if state_dict:
        torch.save(model.state_dict(), state_dict_file(directory))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    del model
    trim_heap()
    drop_page_cache(checkpoint_files(directory, state_dict=state_dict))
    return weights


def state_dict_file(directory: Path) -> Path:
    """The ``torch.save``d state dict written beside a ``save_pretrained`` directory."""
    return directory.parent / f"{directory.name}_{STATE_DICT}"


def checkpoint_files(directory: Path, *, state_dict: bool = False) -> list[Path]:
    """The weight files of a ``save_pretrained`` directory (and the state dict file beside it)."""
    return sorted(directory.glob("*.safetensors")) + ([state_dict_file(directory)] if state_dict else [])


# --- the methods: files -> (wrapper or None, model or None) --------------------------------


def _floor(directory: Path) -> tuple[Any, Any]:
    chunk = np.empty(64 * MIB, dtype=np.uint8)
    for path in checkpoint_files(directory):
        with open(path, "rb", buffering=0) as handle:
            while read := handle.readinto(memoryview(chunk)):  # large reads: the disk's best pace
                np.array(chunk[:read], copy=True)  # one copy into fresh memory, then freed
    return None, None


def _plain(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM

    from ray_zerocopy import ActorWrapper

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(directory))
    state_dict = torch.load(state_dict_file(directory), weights_only=True)
    model.load_state_dict(state_dict)
    del state_dict
    return ActorWrapper(model.eval()), model


def _from_pretrained(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from ray_zerocopy import ActorWrapper

    model = AutoModelForCausalLM.from_pretrained(directory)
    return ActorWrapper(model), model


def _checkpoint(directory: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    from ray_zerocopy import ActorWrapper, Checkpoint

    return ActorWrapper.from_checkpoint(Checkpoint(directory, AutoModelForCausalLM)), None


class _FromConfig:
    """Builds the module a ``save_pretrained`` directory's config describes (the state dict file's factory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self) -> torch.nn.Module:
        from transformers import AutoConfig, AutoModelForCausalLM

        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(self.directory))


def _checkpoint_pt(directory: Path) -> tuple[Any, Any]:
    from ray_zerocopy import ActorWrapper, Checkpoint

    return ActorWrapper.from_checkpoint(Checkpoint(state_dict_file(directory), _FromConfig(directory))), None


SHARE: dict[str, Callable[[Path], tuple[Any, Any]]] = {
    "floor": _floor,
    "plain": _plain,
    "from_pretrained": _from_pretrained,
    "checkpoint": _checkpoint,
    "checkpoint_pt": _checkpoint_pt,
}


# --- the measurement, inside the method's own driver process ----------------------------------


class NodeSampler:
    """Peak of (object store growth + the files' cached pages + this process's anonymous growth)."""

    def __init__(self, files: list[Path], interval: float = 0.1) -> None:
        self.files = files
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def node_bytes(self) -> int:
        """The node's memory now, over the values at :meth:`__enter__`."""
        cached = sum(cached_file_bytes(path) for path in self.files)
        return object_store_bytes_used() - self.store0 + cached + anonymous_memory_bytes() - self.anon0

    def __enter__(self) -> NodeSampler:
        self.store0, self.anon0 = object_store_bytes_used(), anonymous_memory_bytes()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.node_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.node_bytes())


def load_in_actors(wrapper: Any, n_actors: int) -> list[dict[str, float]]:
    """``n_actors`` actors load ``wrapper`` at once and run a first forward; their figures."""
    import ray

    @ray.remote(num_cpus=0)
    class Loader:
        def __init__(self) -> None:
            import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (imported before any timer)

        def anonymous(self) -> int:
            trim_heap()
            return anonymous_memory_bytes()

        def load(self, wrapper: Any, anon0: int) -> dict[str, float]:
            start = time.perf_counter()
            model = wrapper.load()
            loaded = time.perf_counter()
            with torch.no_grad():
                model(torch.zeros(1, 8, dtype=torch.long))
            forward = time.perf_counter()
            trim_heap()
            growth = anonymous_memory_bytes() - anon0
            return {"load_s": loaded - start, "load_forward_s": forward - start, "anon_growth": growth}

    actors = [Loader.remote() for _ in range(n_actors)]
    baselines = ray.get([actor.anonymous.remote() for actor in actors])
    results = ray.get([actor.load.remote(wrapper, anon0) for actor, anon0 in zip(actors, baselines)])
    for actor in actors:
        ray.kill(actor)
    return results


def share_once(method: str, directory: Path, files: list[Path], *, sample_node: bool) -> dict[str, Any]:
    """Run ``method`` on ``directory`` once, timed; the wrapper stays alive.

    Private memory is sampled every 20 ms; with ``sample_node`` the node's memory too,
    every 0.1 s (which costs CPU time: ``mincore`` over every file page).
    """
    drop_page_cache(files)
    trim_heap()
    anon0, store0 = anonymous_memory_bytes(), object_store_bytes_used()
    node = NodeSampler(files) if sample_node else None
    with node or contextlib.nullcontext(), PeakSampler(interval=0.02, read_private=anonymous_memory_bytes) as private:
        start = time.perf_counter()
        wrapper, model = SHARE[method](directory)
        elapsed = time.perf_counter() - start
    del model
    trim_heap()
    return {
        "wrapper": wrapper,
        "seconds": elapsed,
        "peak_private": private.peak_private,
        "peak_node": node.peak if node else None,
        "store_growth": object_store_bytes_used() - store0,
        "cached": sum(cached_file_bytes(path) for path in files),
        "private_after": anonymous_memory_bytes() - anon0,
    }


def wait_for_store(used: int, timeout: float = 60.0) -> None:
    """Wait until the object store holds no more than ``used`` bytes again (a release is asynchronous)."""
    deadline = time.monotonic() + timeout
    while object_store_bytes_used() > used and time.monotonic() < deadline:
        time.sleep(0.1)


def node_after(run: dict[str, Any]) -> int:
    """Node memory after sharing: store growth + the files' cached pages + the sharer's private growth."""
    return int(run["store_growth"] + run["cached"] + run["private_after"])


def measure(request: dict[str, Any]) -> dict[str, Any]:
    """One method in this (fresh) process: warm up on the tiny checkpoint, then measure."""
    import ray

    ray.init(address=request["address"], log_to_driver=False)
    try:
        method = request["method"]
        warm = share_once(method, Path(request["warmup"]), [], sample_node=True)
        if warm["wrapper"] is not None:
            warm["wrapper"].release()
        del warm
        gc.collect()
        directory = Path(request["directory"])
        files = checkpoint_files(directory, state_dict=method in ("plain", "checkpoint_pt"))
        # One run sampling the node's memory, then ``repeats`` runs timed without it; the
        # last run's wrapper is kept (and loaded in actors).
        runs = []
        store0 = object_store_bytes_used()
        for repeat in range(1 + request["repeats"]):
            runs.append(share_once(method, directory, files, sample_node=repeat == 0))
            wrapper = runs[-1].pop("wrapper")
            if wrapper is not None and repeat < request["repeats"]:
                wrapper.release()
                wait_for_store(store0)
        result = runs[-1]
        result["times"] = [run["seconds"] for run in runs[1:]] or [runs[0]["seconds"]]
        result["seconds"] = statistics.median(result["times"])
        result["peak_private"] = max(run["peak_private"] for run in runs)
        result["peak_node"] = runs[0]["peak_node"]
        if wrapper is not None and request.get("actors"):
            actors = load_in_actors(wrapper, request["actors"])
            result["actors"] = actors
            result["node_with_actors"] = node_after(result) + sum(actor["anon_growth"] for actor in actors)
        if wrapper is not None:
            wrapper.release()
        return result
    finally:
        ray.shutdown()


def measure_in_subprocess(request: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure` in a fresh Python process (``benchkit`` on its ``PYTHONPATH``, as
    :func:`benchkit.cluster.start_ray` sets it); its result, or ``{"error": ...}``."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchkit.checkpoints", json.dumps(request)],
        capture_output=True,
        text=True,
        check=False,
    )
    for line in completed.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
    return {"error": "subprocess failed: " + " | ".join(tail)}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print("RESULT " + json.dumps(measure(json.loads(sys.argv[1]))), flush=True)
