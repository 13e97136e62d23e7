"""The ways a worker can get a model, each split into a driver step and a worker step.

A :class:`Method` prepares a small *handle* on the driver (a wrapper, an ObjectRef, a
file path) and turns it into a ready model inside an actor. Every method is measured
by the same probe (:mod:`benchkit.probe`), so their numbers compare directly.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.memory import SHM_PREFIX
from benchkit.models import ModelSpec, blank_model, state_dict_for_files

#: Environment variable of Ray's experimental zero-copy tensor serialization.
RAY_ZERO_COPY_ENV = "RAY_ENABLE_ZERO_COPY_TORCH_TENSORS"


@dataclass(frozen=True)
class Method:
    """One way to deliver a model to workers.

    Attributes:
        name: key used on the command line and in results.
        label: human name for tables.
        scripted: whether it takes the TorchScript variant of the model.
        prepare: driver step ``(model, spec, workdir) -> handle``.
        load: worker step ``(handle, spec) -> model``.
        cleanup: frees what ``prepare`` made (files, object refs).
        env: environment the driver step needs *before* ``import ray``; such a method
            runs in a subprocess driver connected to the same cluster.
        exported: whether it takes the ``torch.export`` variant of the model (an
            ExportedProgram); its worker step returns ``program.module()``, ready to call.
        floor: a lower bound measured beside the methods, not a way to deliver the model:
            its model's weights are placeholders, so its outputs are not compared.
    """

    name: str
    label: str
    scripted: bool
    prepare: Callable[[nn.Module, ModelSpec, Path], Any]
    load: Callable[[Any, ModelSpec], nn.Module]
    cleanup: Callable[[Any], None]
    env: tuple[tuple[str, str], ...] = ()
    exported: bool = False
    floor: bool = False


def _no_cleanup(handle: Any) -> None:
    del handle


def _remove_file(handle: Any) -> None:
    Path(handle).unlink(missing_ok=True)


def fresh_model(spec: ModelSpec) -> nn.Module:
    """An allocated but uninitialized model, as a user would build before loading weights."""
    model = blank_model(spec).to_empty(device="cpu")
    model.tie_weights()
    return model


# --- ray-zerocopy ------------------------------------------------------------------


def _zerocopy_prepare(model: nn.Module, spec: ModelSpec, workdir: Path) -> Any:
    if spec.scripted:
        from ray_zerocopy import JITActorWrapper

        return JITActorWrapper(model)
    from ray_zerocopy_core import ActorWrapper

    return ActorWrapper(model)


def _zerocopy_load(handle: Any, spec: ModelSpec) -> nn.Module:
    return handle.load()


def _zerocopy_cleanup(handle: Any) -> None:
    handle.release()


# --- torch.save / torch.load ----------------------------------------------------------


def _torch_save(model: nn.Module, spec: ModelSpec, workdir: Path) -> str:
    path = workdir / f"state_dict_{os.getpid()}_{spec.size_mib}.pt"
    torch.save(model.state_dict(), path)
    return str(path)


def _torch_load(handle: Any, spec: ModelSpec) -> nn.Module:
    model = fresh_model(spec)
    model.load_state_dict(torch.load(handle, map_location="cpu", weights_only=True))
    return model.eval()


def _torch_load_mmap(handle: Any, spec: ModelSpec) -> nn.Module:
    """The strongest plain-PyTorch load: the file mapped, not read; parameters assigned, not copied."""
    model = blank_model(spec)
    model.load_state_dict(torch.load(handle, mmap=True, weights_only=True), assign=True)
    model.tie_weights()
    return model.eval()


# --- ray.put of the model ----------------------------------------------------------------


def _ray_put(model: nn.Module, spec: ModelSpec, workdir: Path) -> list[Any]:
    import ray

    return [ray.put(model)]  # nested: the actor calls ray.get itself, inside the timer


def _ray_get(handle: Any, spec: ModelSpec) -> nn.Module:
    import ray

    return ray.get(handle[0])


def _drop_ref(handle: Any) -> None:
    handle.clear()


# --- safetensors in /dev/shm ----------------------------------------------------------------


def _safetensors_save(model: nn.Module, spec: ModelSpec, workdir: Path) -> str:
    from safetensors.torch import save_file

    path = Path("/dev/shm") / f"{SHM_PREFIX}{os.getpid()}_{spec.size_mib}.safetensors"
    save_file(state_dict_for_files(model), str(path))
    return str(path)


def _safetensors_load(handle: Any, spec: ModelSpec) -> nn.Module:
    from safetensors.torch import load_file

    model = blank_model(spec)
    model.load_state_dict(load_file(handle), strict=False, assign=True)
    model.tie_weights()
    return model.eval()


# --- TorchScript from disk -------------------------------------------------------------------


def _jit_save(model: nn.Module, spec: ModelSpec, workdir: Path) -> str:
    path = workdir / f"traced_{os.getpid()}_{spec.size_mib}.pt"
    torch.jit.save(model, str(path))
    return str(path)


def _jit_load(handle: Any, spec: ModelSpec) -> nn.Module:
    return torch.jit.load(handle, map_location="cpu")


def _jit_skeleton(model: nn.Module, spec: ModelSpec, workdir: Path) -> bytes:
    """The weightless archive the jit backend stores for ``model`` (its code, placeholder weights)."""
    from ray_zerocopy_jit.backend import JITBackend

    return JITBackend().extract(model).skeleton


def _jit_load_bytes(handle: Any, spec: ModelSpec) -> nn.Module:
    return torch.jit.load(io.BytesIO(handle), map_location="cpu")


# --- torch.export ---------------------------------------------------------------------------


def _export_zerocopy_load(handle: Any, spec: ModelSpec) -> nn.Module:
    return handle.load().module()  # the program's weights alias the object store; module() copies none


def _export_save(model: Any, spec: ModelSpec, workdir: Path) -> str:
    path = workdir / f"exported_{os.getpid()}_{spec.size_mib}.pt2"
    torch.export.save(model, path)
    return str(path)


def _export_load(handle: Any, spec: ModelSpec) -> nn.Module:
    return torch.export.load(handle).module()


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method("zerocopy", "ray-zerocopy (actor mode)", False, _zerocopy_prepare, _zerocopy_load, _zerocopy_cleanup),
        Method("torch_load", "torch.load of a saved state dict", False, _torch_save, _torch_load, _remove_file),
        Method(
            "torch_load_mmap",
            "torch.load(mmap=True) + load_state_dict(assign=True)",
            False,
            _torch_save,
            _torch_load_mmap,
            _remove_file,
        ),
        Method("ray_put", "ray.put(model) + ray.get", False, _ray_put, _ray_get, _drop_ref),
        Method(
            "ray_zero_copy_env",
            f"{RAY_ZERO_COPY_ENV}=1 + ray.put",
            False,
            _ray_put,
            _ray_get,
            _drop_ref,
            env=((RAY_ZERO_COPY_ENV, "1"),),
        ),
        Method(
            "safetensors_shm",
            "safetensors mmap from /dev/shm",
            False,
            _safetensors_save,
            _safetensors_load,
            _remove_file,
        ),
        Method(
            "jit_zerocopy",
            "ray-zerocopy jit backend (actor mode)",
            True,
            _zerocopy_prepare,
            _zerocopy_load,
            _zerocopy_cleanup,
        ),
        Method("jit_load", "torch.jit.load from disk", True, _jit_save, _jit_load, _remove_file),
        Method(
            "jit_skeleton_load",
            "floor: torch.jit.load of the weightless archive",
            True,
            _jit_skeleton,
            _jit_load_bytes,
            _no_cleanup,
            floor=True,
        ),
        Method(
            "export_zerocopy",
            "ray-zerocopy export backend (actor mode)",
            False,
            _zerocopy_prepare,
            _export_zerocopy_load,
            _zerocopy_cleanup,
            exported=True,
        ),
        Method(
            "export_load",
            "torch.export.load from disk",
            False,
            _export_save,
            _export_load,
            _remove_file,
            exported=True,
        ),
    )
}

EAGER_METHODS = [name for name, method in METHODS.items() if not method.scripted and not method.exported]
JIT_METHODS = [name for name, method in METHODS.items() if method.scripted]
EXPORT_METHODS = [name for name, method in METHODS.items() if method.exported]
#: The alternatives whose weights map memory shared by every worker (the object store,
#: /dev/shm, or the page cache of a mapped file); the targets compare ray-zerocopy with the best.
ZERO_COPY_ALTERNATIVES = ("ray_zero_copy_env", "safetensors_shm", "torch_load_mmap")
