"""Without the jit package: TorchScript entry points name the install command; core still works.

The missing distribution is simulated in-process (``not_installed``: an import blocker
and the ``jit`` entry point filtered out); everything is restored after each test.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

import pytest
import torch
from models import script
from not_installed import not_installed
from torch import nn

import ray_zerocopy_core.registry
from ray_zerocopy_core.plugin import LoadOptions

HINT = "pip install 'ray-zerocopy[jit]'"
BLOCKED = "ray_zerocopy_jit"


def jit_not_installed() -> contextlib.AbstractContextManager[list[str]]:
    """This process as if ``ray-zerocopy-jit`` were not installed (``ray_zerocopy.jit`` imported afresh).

    Yields the names of the jit modules something tried to import inside the block.
    """
    return not_installed(BLOCKED, importers=("ray_zerocopy.jit",))


@pytest.fixture
def without_jit() -> Iterator[None]:
    """This process as if ``ray-zerocopy-jit`` were not installed, for one test."""
    with jit_not_installed():
        yield


def _script_module() -> torch.jit.ScriptModule:
    return script(nn.Linear(4, 4))


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
    from ray_zerocopy import ModelWrapper
    from ray_zerocopy.errors import BackendNotInstalledError
    from ray_zerocopy_core.registry import find_backend

    script_module = _script_module()
    with pytest.raises(BackendNotInstalledError) as info:
        find_backend(script_module)
    assert HINT in str(info.value) and "not installed" in str(info.value)
    with pytest.raises(BackendNotInstalledError) as info:
        ModelWrapper(script_module)
    assert HINT in str(info.value)


@pytest.mark.usefixtures("without_jit")
def test_script_module_in_a_pipeline_is_not_shared_as_eager() -> None:
    from ray_zerocopy import ModelWrapper
    from ray_zerocopy.errors import BackendNotInstalledError

    class Pipeline:
        def __init__(self) -> None:
            self.model = _script_module()

    with pytest.raises(BackendNotInstalledError) as info:
        ModelWrapper(Pipeline())
    assert HINT in str(info.value)


def test_the_rest_of_ray_zerocopy_works_without_reaching_for_the_jit_package() -> None:
    import ray_zerocopy

    with jit_not_installed() as refused:
        assert "jit" not in ray_zerocopy_core.registry.backend_names()
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).eval()
        backend = ray_zerocopy_core.registry.backend_for(model)
        assert backend.name == "nn"
        rebuilt = backend.rebuild(backend.extract(model), LoadOptions())
        x = torch.randn(2, 4)
        assert torch.equal(rebuilt(x), model(x))
        # Eager models never need the jit package: nothing even tried to import it.
        assert refused == [], f"an eager model's path tried to import {refused}"
        with pytest.raises(ImportError):
            ray_zerocopy.JITActorWrapper  # noqa: B018  (the check above sees attempts: this one is one)
        assert refused, "the import blocker saw no attempt, so the check above proved nothing"


def test_everything_is_back_afterwards() -> None:
    import ray_zerocopy
    import ray_zerocopy.jit

    module, before = sys.modules["ray_zerocopy.jit"], ray_zerocopy.jit.JITActorWrapper
    with jit_not_installed():
        assert "jit" not in ray_zerocopy_core.registry.backend_names()
        with pytest.raises(ImportError):
            importlib.import_module("ray_zerocopy.jit")
    assert sys.modules["ray_zerocopy.jit"] is module and ray_zerocopy.jit is module  # the same objects, not re-imported
    assert ray_zerocopy.JITActorWrapper is before
    assert "jit" in ray_zerocopy_core.registry.backend_names()
    assert ray_zerocopy_core.registry.backend_for(_script_module()).name == "jit"
