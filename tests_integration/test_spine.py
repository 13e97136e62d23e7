"""The house rules of the code base, checked: backends import only the plugin SDK; no forwarding modules.

Static checks over the source tree (no Ray): a backend package (jit, export, the toy
backend of these tests, the example plugin) may import ``ray_zerocopy_core.plugin``
and nothing else of core, so the SDK is all a backend author needs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND_SOURCES = {
    "ray-zerocopy-jit": ROOT / "packages/ray-zerocopy-jit/src",
    "ray-zerocopy-export": ROOT / "packages/ray-zerocopy-export/src",
    "toy-backend": ROOT / "tests_integration/fixtures/toy-backend/src",
    "example plugin": ROOT / "examples/custom_backend/src",
}
CORE = ROOT / "packages/ray-zerocopy-core/src/ray_zerocopy_core"


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports (``from x import y`` counts as ``x`` and ``x.y``)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
            modules += [f"{node.module}.{alias.name}" for alias in node.names]
    return modules


@pytest.mark.parametrize("package", sorted(BACKEND_SOURCES))
def test_backend_packages_import_only_the_plugin_sdk_from_core(package: str) -> None:
    files = sorted(BACKEND_SOURCES[package].rglob("*.py"))
    assert files, f"no sources found for {package}"
    offending = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in files
        for module in imported_modules(path)
        if module.startswith("ray_zerocopy_core") and not module.startswith("ray_zerocopy_core.plugin")
    }
    assert not offending, "backends must import only ray_zerocopy_core.plugin:\n" + "\n".join(sorted(offending))


def test_no_core_module_only_forwards_calls() -> None:
    """Every core module defines something of its own (a function, class or constant), not just imports."""
    forwarding = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        own = [
            node
            for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))
            and not (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets))
        ]
        if not own and path.name not in {"__init__.py"}:
            forwarding.append(str(path.relative_to(ROOT)))
    assert not forwarding, forwarding
