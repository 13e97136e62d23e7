"""The backend registry: entry-point discovery, selection by specificity, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata
from typing import Any, ClassVar

import pytest
import torch
from torch import nn

from ray_zerocopy_core import registry
from ray_zerocopy_core.errors import BackendError, BackendNotInstalledError, InvalidBackendError, InvalidOptionError
from ray_zerocopy_core.nn_backend import NNBackend
from ray_zerocopy_core.plugin import LoadOptions, ModelPayload


class SpecialModule(nn.Linear):
    """A module subclass a plugin claims, to test that the most specific backend wins."""


class SpecialBackend:
    name: ClassVar[str] = "special"
    model_types: ClassVar[tuple[type, ...]] = (SpecialModule,)

    def handles(self, obj: object) -> bool:
        return isinstance(obj, SpecialModule)

    def extract(self, model: Any) -> ModelPayload:
        return NNBackend().extract(model)

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        return NNBackend().rebuild(payload, options)


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=registry.ENTRY_POINT_GROUP)


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[metadata.EntryPoint]]:
    """Replace installed entry points by a list the test fills; restore the registry after."""
    points: list[metadata.EntryPoint] = []

    def entry_points(group: str) -> list[metadata.EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(registry.metadata, "entry_points", entry_points)
    registry.reset_registry()
    yield points
    registry.reset_registry()


NN = entry_point("nn", "ray_zerocopy_core.nn_backend:NNBackend")


def test_core_declares_nn_through_its_entry_point() -> None:
    registry.reset_registry()
    installed = {ep.name: ep.value for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    assert installed["nn"] == "ray_zerocopy_core.nn_backend:NNBackend"
    assert isinstance(registry.get_backend("nn"), NNBackend)


def test_discovery_is_lazy_and_cached(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    first = registry.get_backend("nn")
    fake_entry_points.clear()  # read once: later changes are not seen until reset
    assert registry.get_backend("nn") is first


def test_plugin_is_imported_only_when_used(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.extend([NN, entry_point("ghost", "no_such_module_xyz:Backend")])
    assert registry.backend_names() == ["ghost", "nn"]  # listing imports nothing
    assert registry.broken_backends() == {}


def test_most_specific_backend_wins(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    registry.register_backend(SpecialBackend())
    assert registry.backend_for(SpecialModule(2, 2)).name == "special"
    assert registry.backend_for(nn.Linear(2, 2)).name == "nn"


def test_broken_plugin_is_named_and_others_keep_working(
    fake_entry_points: list[metadata.EntryPoint], caplog: pytest.LogCaptureFixture
) -> None:
    fake_entry_points.extend([NN, entry_point("broken", "no_such_module_xyz:Backend")])
    assert registry.backend_for(nn.Linear(2, 2)).name == "nn"
    assert "broken" in registry.broken_backends()
    assert "Error importing ray-zerocopy backend plugin 'broken'" in caplog.text
    with pytest.raises(BackendError, match="plugin 'broken'.*no_such_module_xyz"):
        registry.get_backend("broken")


def test_plugin_that_is_not_a_backend_is_reported(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(entry_point("odd", "builtins:dict"))
    with pytest.raises(BackendError, match="'odd'.*does not implement the Backend protocol"):
        registry.get_backend("odd")


def test_unknown_name_lists_installed_and_the_group(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    with pytest.raises(BackendError, match=r"No ray-zerocopy backend named 'onnx'.*nn.*ray_zerocopy.backends"):
        registry.get_backend("onnx")


def test_missing_jit_backend_names_the_extra(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    with pytest.raises(BackendNotInstalledError, match=r"pip install 'ray-zerocopy\[jit\]'"):
        registry.get_backend("jit")


def test_script_module_without_jit_never_falls_to_nn(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(BackendNotInstalledError, match=r"RecursiveScriptModule.*pip install 'ray-zerocopy\[jit\]'"):
        registry.backend_for(scripted)


def test_broken_jit_plugin_is_not_replaced_by_nn(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.extend([NN, entry_point("jit", "no_such_module_xyz:JITBackend")])
    scripted = torch.jit.script(nn.Linear(2, 2))
    with pytest.raises(BackendNotInstalledError, match="failed to import"):
        registry.backend_for(scripted)


def test_nothing_handles_a_plain_object(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    assert registry.find_backend(42) is None
    with pytest.raises(BackendError, match="No ray-zerocopy backend can share an object of type int"):
        registry.backend_for(42)


def test_register_is_idempotent_and_guards_names(fake_entry_points: list[metadata.EntryPoint]) -> None:
    special = SpecialBackend()
    registry.register_backend(special)
    registry.register_backend(special)
    with pytest.raises(InvalidOptionError, match="already registered.*replace=True"):
        registry.register_backend(SpecialBackend())
    replacement = SpecialBackend()
    registry.register_backend(replacement, replace=True)
    assert registry.get_backend("special") is replacement
    with pytest.raises(InvalidBackendError, match="Backend protocol"):
        registry.register_backend(object())  # type: ignore[arg-type]


def test_broken_backends_view_is_read_only(fake_entry_points: list[metadata.EntryPoint]) -> None:
    with pytest.raises(TypeError, match="'mappingproxy' object does not support item assignment"):
        registry.broken_backends()["x"] = "y"  # type: ignore[index]
    assert "x" not in registry.broken_backends()


def test_locator_imports_a_backend_without_scanning_entry_points(
    fake_entry_points: list[metadata.EntryPoint],
) -> None:
    locator = registry.backend_locator(SpecialBackend())
    assert locator == f"{__name__}:SpecialBackend"
    backend = registry.get_backend("special", locator=locator)
    assert isinstance(backend, SpecialBackend)
    assert registry._registry._entry_points is None  # discovery never ran


def test_a_stale_locator_falls_back_to_discovery(fake_entry_points: list[metadata.EntryPoint]) -> None:
    fake_entry_points.append(NN)
    backend = registry.get_backend("nn", locator="moved_away_module:NNBackend")
    assert isinstance(backend, NNBackend)
    with pytest.raises(BackendError, match="No ray-zerocopy backend named 'special'"):
        registry.get_backend("special", locator="ray_zerocopy_core.nn_backend:NNBackend")  # name mismatch
