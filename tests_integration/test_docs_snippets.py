"""Run the code blocks of the documentation that are meant to run, and check the API docs.

Marking convention (used in ``docs/**/*.md``): a fenced ```` ```python ```` block placed
right after a line ``<!-- run -->`` is runnable. The marked blocks of one page are
joined, in page order, into one script that runs in a fresh Python process with its
own private Ray (``RAY_ADDRESS=local``), so later blocks may use names defined by
earlier ones, as a reader following the page would. Unmarked blocks are illustrations
(they may use placeholders like ``MyPipeline``) and are only checked to be valid Python.

The last tests check that every public class and function of our packages has a
docstring, since the API reference is generated from them.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest
from environment import require
from scripts import run_script

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
RUN_MARKER = "<!-- run -->"
TIMEOUT_S = 300
FENCE = re.compile(r"^(?P<marker><!-- run -->\n)?```python\n(?P<code>.*?)^```$", re.MULTILINE | re.DOTALL)
#: The backend distributions' packages, documented in the API reference like core.
BACKEND_PACKAGES = ("ray_zerocopy_jit", "ray_zerocopy_export")
#: Every page of the site, including those written by other engineers (checked for valid Python only).
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


def python_blocks(page: Path) -> list[tuple[bool, str]]:
    """(is_runnable, code) for each ```python block of ``page``, in order."""
    return [(bool(m.group("marker")), m.group("code")) for m in FENCE.finditer(page.read_text())]


def runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(run for run, _ in python_blocks(p))]


def page_id(page: Path) -> str:
    return str(page.relative_to(DOCS))


def test_some_pages_have_runnable_blocks() -> None:
    names = {page_id(p) for p in runnable_pages()}
    assert {"getting-started.md", "guide/actor-mode.md", "guide/task-mode.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_are_valid_python(page: Path) -> None:
    for _, code in python_blocks(page):
        ast.parse(code)


@pytest.mark.parametrize("page", runnable_pages(), ids=page_id)
def test_runnable_blocks_run(page: Path, tmp_path: Path) -> None:
    code = "\n\n".join(code for run, code in python_blocks(page) if run)
    script = tmp_path / (page.stem + "_snippets.py")
    script.write_text(code + "\n\nimport ray\n\nray.shutdown()\n")
    result = run_script(script, cwd=tmp_path, timeout=TIMEOUT_S, label=f"the runnable blocks of {page_id(page)}")
    assert result.returncode == 0, f"the runnable blocks of {page_id(page)} failed:\n{result.stdout[-6000:]}"


def public_objects() -> list[tuple[str, object]]:
    """Every public class, function, method and property defined in our packages."""
    found = []
    for package in ("ray_zerocopy", "ray_zerocopy_core", *BACKEND_PACKAGES):
        root = importlib.import_module(package)
        modules = [package, *(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))]
        for module_name in modules:
            if any(part.startswith("_") for part in module_name.split(".")):
                continue
            module = importlib.import_module(module_name)
            found.append((module_name, module))
            for name, obj in vars(module).items():
                if name.startswith("_") or getattr(obj, "__module__", None) != module_name:
                    continue
                if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                    continue
                found.append((f"{module_name}.{name}", obj))
                if inspect.isclass(obj):
                    for member_name, member in vars(obj).items():
                        target = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                        if not member_name.startswith("_") and inspect.isfunction(target):
                            found.append((f"{module_name}.{name}.{member_name}", target))
    return found


def test_every_public_name_has_a_docstring() -> None:
    for package in BACKEND_PACKAGES:
        require(package, "its public names are in the API reference")
    missing = [name for name, obj in public_objects() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"public names without a docstring (the API reference needs one): {missing}"


def test_api_page_lists_every_exported_name() -> None:
    import ray_zerocopy
    from ray_zerocopy._jit_import import JIT_NAMES

    page = (DOCS / "api" / "ray_zerocopy.md").read_text()
    exported = [name for name in ray_zerocopy.__all__ if name != "__version__"] + sorted(JIT_NAMES)
    missing = [name for name in exported if f":: {name}" not in page]
    assert not missing, f"docs/api/ray_zerocopy.md does not list {missing}"
