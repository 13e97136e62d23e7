"""Without the jit package: TorchScript entry points name the install command; core still works.

The missing distribution is simulated in-process: a ``sys.meta_path`` blocker makes
``ray_zerocopy_jit`` unimportable and the ``jit`` entry point is filtered out of
``importlib.metadata.entry_points``. Everything is restored after each test.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Iterator
from importlib import metadata
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

from ray_zerocopy_core.plugin import LoadOptions
from ray_zerocopy_core.registry import ENTRY_POINT_GROUP, reset_registry

HINT = "pip install 'ray-zerocopy[jit]'"
BLOCKED = "ray_zerocopy_jit"


class _BlockJit(MetaPathFinder):
    """Finds ``ray_zerocopy_jit`` (and submodules) only to refuse them, as if not installed."""

    def find_spec(self, fullname: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if fullname == BLOCKED or fullname.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"No module named {fullname!r}", name=fullname)
        return None


def _is_jit_module(name: str) -> bool:
    return name == BLOCKED or name.startswith(BLOCKED + ".") or name.startswith("ray_zerocopy.jit")


@pytest.fixture
def without_jit(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as if ``ray-zerocopy-jit`` were not installed."""
    import ray_zerocopy

    saved_modules = {name: module for name, module in sys.modules.items() if _is_jit_module(name)}
    saved_attr = ray_zerocopy.__dict__.get("jit")
    for name in saved_modules:
        del sys.modules[name]
    ray_zerocopy.__dict__.pop("jit", None)

    real_entry_points = metadata.entry_points

    def entry_points_without_jit(**params: Any) -> Any:
        found = real_entry_points(**params)
        if params.get("group") == ENTRY_POINT_GROUP:
            return metadata.EntryPoints(ep for ep in found if not ep.value.startswith(BLOCKED))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points_without_jit)
    blocker = _BlockJit()
    sys.meta_path.insert(0, blocker)
    reset_registry()
    try:
        yield
    finally:
        sys.meta_path.remove(blocker)
        for name in [name for name in sys.modules if _is_jit_module(name)]:
            del sys.modules[name]
        sys.modules.update(saved_modules)
        if saved_attr is not None:
            ray_zerocopy.jit = saved_attr  # type: ignore[attr-defined]
        monkeypatch.undo()
        reset_registry()


def _script_module() -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(nn.Linear(4, 4))


@pytest.mark.usefixtures("without_jit")
@pytest.mark.parametrize("name", ["JITActorWrapper", "JITTaskWrapper", "JITModelWrapper"])
def test_jit_wrappers_name_the_install_command(name: str) -> None:
    import ray_zerocopy

    with pytest.raises(ImportError, match=HINT.replace("[", r"\[").replace("]", r"\]")):
        getattr(ray_zerocopy, name)


@pytest.mark.usefixtures("without_jit")
def test_from_import_names_the_install_command() -> None:
    with pytest.raises(ImportError) as info:
        exec("from ray_zerocopy import JITActorWrapper", {})
    assert HINT in str(info.value)


@pytest.mark.usefixtures("without_jit")
@pytest.mark.parametrize("module", ["ray_zerocopy.jit", "ray_zerocopy.jit.actor", "ray_zerocopy.jit.invoke"])
def test_jit_modules_name_the_install_command(module: str) -> None:
    with pytest.raises(ImportError) as info:
        importlib.import_module(module)
    assert HINT in str(info.value)


@pytest.mark.usefixtures("without_jit")
def test_script_module_gets_backend_not_installed() -> None:
    from ray_zerocopy import BackendNotInstalledError, ModelWrapper, find_backend

    script_module = _script_module()
    with pytest.raises(BackendNotInstalledError) as info:
        find_backend(script_module)
    assert HINT in str(info.value) and "not installed" in str(info.value)
    with pytest.raises(BackendNotInstalledError) as info:
        ModelWrapper(script_module)
    assert HINT in str(info.value)


@pytest.mark.usefixtures("without_jit")
def test_script_module_in_a_pipeline_is_not_shared_as_eager() -> None:
    from ray_zerocopy import BackendNotInstalledError, ModelWrapper

    class Pipeline:
        def __init__(self) -> None:
            self.model = _script_module()

    with pytest.raises(BackendNotInstalledError) as info:
        ModelWrapper(Pipeline())
    assert HINT in str(info.value)


@pytest.mark.usefixtures("without_jit")
def test_the_rest_of_ray_zerocopy_works() -> None:
    import ray_zerocopy

    assert "jit" not in ray_zerocopy.backend_names()
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
    backend = ray_zerocopy.backend_for(model)
    assert backend.name == "nn"
    rebuilt = backend.rebuild(backend.extract(model), LoadOptions())
    x = torch.randn(2, 4)
    assert torch.equal(rebuilt(x), model(x))
    assert BLOCKED not in sys.modules


def test_everything_is_back_afterwards() -> None:
    import ray_zerocopy
    import ray_zerocopy.jit

    assert ray_zerocopy.JITActorWrapper is ray_zerocopy.jit.JITActorWrapper
    assert ray_zerocopy.backend_for(_script_module()).name == "jit"
