"""Release checks: every distribution is self-contained, and all of them move together.

Each ``packages/*/pyproject.toml`` holds static metadata: its own ``version`` and its
siblings pinned literally (``ray-zerocopy-core==1.0.0``). Nothing outside a package's
folder takes part in its build, so a wheel built from its sdist equals one built from
the working tree. What ties the distributions together is checked here: one version
for all, every sibling pinned to exactly that version, the meta package offering one
extra per backend distribution, and each shipping the license its metadata names.

The wheels are built the way a release is: an sdist of each distribution, then a wheel
from each unpacked sdist, offline, with the hatchling installed in this environment.
Core's wheel is the one that is not pure Python: its build hook compiles the fault
explainer into it (``py3-none-<platform>``). The checks at the end install it, and
core's sdist, where no C compiler can be found, and make a protected load with each.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from environment import require

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, as the tomli distribution
    import tomli as tomllib
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).parent.parent
PACKAGES = sorted(path.parent for path in (ROOT / "packages").glob("*/pyproject.toml"))
CORE = "ray-zerocopy-core"
META = "ray-zerocopy"
BACKEND_GROUP = "ray_zerocopy.backends"

#: Every release on PyPI under one of our distribution names, as ``pip index versions``
#: listed them on 2026-11-30. Only ``ray-zerocopy`` has any, and they belong to an
#: unrelated older project; our first release must sort above all of them so that
#: ``pip install ray-zerocopy`` picks ours. Refresh this list before each release.
PUBLISHED: dict[str, tuple[str, ...]] = {META: ("0.1.0", "0.1.2", "0.1.5", "0.2.0")}


def project_table(package: Path) -> dict[str, Any]:
    """The ``[project]`` table of ``package``'s pyproject.toml."""
    project: dict[str, Any] = tomllib.loads((package / "pyproject.toml").read_text())["project"]
    return project


PROJECTS = {project_table(package)["name"]: project_table(package) for package in PACKAGES}
VERSION = PROJECTS[META]["version"]
#: Distributions that carry a backend and are installed through an extra of the meta package.
BACKENDS = sorted(set(PROJECTS) - {CORE, META})


def extra_name(distribution: str) -> str:
    """The meta package's extra for a backend distribution: ``ray-zerocopy-jit`` -> ``jit``."""
    return distribution.removeprefix(f"{META}-")


def import_name(package: Path) -> str:
    """The top-level module a distribution's wheel ships (``src/<name>``)."""
    config = tomllib.loads((package / "pyproject.toml").read_text())
    (source,) = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return str(Path(source).name)


def requirements(project: dict[str, Any]) -> list[Requirement]:
    """Every requirement of ``project``, plain and in extras."""
    found = [Requirement(text) for text in project.get("dependencies", [])]
    for deps in project.get("optional-dependencies", {}).values():
        found += [Requirement(text) for text in deps]
    return found


def test_the_known_distributions_are_all_here() -> None:
    assert {CORE, META, "ray-zerocopy-jit"} <= set(PROJECTS)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_metadata_is_static_and_self_contained(package: Path) -> None:
    project = project_table(package)
    assert "dynamic" not in project, f"{package.name}: metadata must be static, found dynamic={project['dynamic']}"
    hatch = tomllib.loads((package / "pyproject.toml").read_text()).get("tool", {}).get("hatch", {})
    assert "hooks" not in hatch.get("metadata", {}), f"{package.name}: no metadata hooks (they live outside sdists)"
    assert "version" not in hatch, f"{package.name}: the version is the static [project] version"
    assert ".." not in (package / "pyproject.toml").read_text(), f"{package.name}: refers outside its folder"


def test_every_distribution_has_the_same_version() -> None:
    versions = {name: project["version"] for name, project in PROJECTS.items()}
    assert len(set(versions.values())) == 1, f"one version for all distributions, found {versions}"


def test_siblings_are_pinned_to_exactly_that_version() -> None:
    wrong = [
        f"{name}: {req}"
        for name, project in PROJECTS.items()
        for req in requirements(project)
        if req.name in PROJECTS and str(req.specifier) != f"=={VERSION}"
    ]
    assert not wrong, f"siblings must be pinned =={VERSION}: {wrong}"
    for name in BACKENDS:
        assert any(req.name == CORE for req in requirements(PROJECTS[name])), f"{name} must depend on {CORE}"


def test_meta_package_has_one_extra_per_backend_and_nothing_else_of_ours() -> None:
    meta = PROJECTS[META]
    assert [Requirement(text).name for text in meta["dependencies"] if Requirement(text).name in PROJECTS] == [CORE]
    extras = meta.get("optional-dependencies", {})
    for name in BACKENDS:
        assert extras.get(extra_name(name)) == [f"{name}=={VERSION}"], f"extra [{extra_name(name)}] must pin {name}"


def test_release_version_sorts_above_everything_published_under_our_names() -> None:
    for name, versions in PUBLISHED.items():
        assert Version(VERSION) > max(map(Version, versions)), f"{VERSION} would lose to {name} {max(versions)}"


def test_installed_packages_report_the_release_version() -> None:
    import ray_zerocopy

    assert ray_zerocopy.__version__ == VERSION, "reinstall the editable packages after a version change"
    for name in PROJECTS:
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            pytest.fail(
                f"{name} is not installed: every distribution of this repository is (pip install -e packages/*)"
            )
        assert installed == VERSION, f"{name} {installed} is installed; reinstall it ({VERSION} in its pyproject)"


def supported_versions() -> dict[str, tuple[str, str | None]]:
    """noxfile.py's ``SUPPORTED`` table (read as data, so nox need not be installed here)."""
    for node in ast.parse((ROOT / "noxfile.py").read_text()).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.AnnAssign) and isinstance(target, ast.Name) and target.id == "SUPPORTED" and node.value:
            table: dict[str, tuple[str, str | None]] = ast.literal_eval(node.value)
            return table
    raise AssertionError("noxfile.py has no SUPPORTED table")


SUPPORTED = supported_versions()


def test_declared_lower_bounds_are_the_lowest_versions_the_matrix_proves() -> None:
    """Every bound on torch, Ray, numpy and Python is ``>=`` the lowest of noxfile.py's table, nothing else."""
    lowest = {name: Version(low) for name, (low, _) in SUPPORTED.items()}
    wrong = []
    for name, project in PROJECTS.items():
        python = project["requires-python"]
        if python != f">={SUPPORTED['python'][0]}":
            wrong.append(f"{name}: requires-python {python!r}")
        for req in requirements(project):
            clauses = [(clause.operator, Version(clause.version)) for clause in req.specifier]
            if req.name in lowest and clauses != [(">=", lowest[req.name])]:  # a floor, no upper bound
                wrong.append(f"{name}: {req} (noxfile.py proves {req.name}>={SUPPORTED[req.name][0]})")
    assert not wrong, f"declared bounds differ from noxfile.py's SUPPORTED table: {wrong}"
    core = {req.name for req in requirements(PROJECTS[CORE])}
    assert {"torch", "ray", "numpy"} <= core, f"{CORE} must declare its floor of each: {core}"


def test_each_bound_says_which_api_sets_it() -> None:
    """A comment beside each torch, Ray and numpy bound names what needs that version."""
    for package in PACKAGES:
        for line in (package / "pyproject.toml").read_text().splitlines():
            text, _, comment = line.partition("#")
            for dependency in ("torch", "ray", "numpy"):
                if f'"{dependency}>=' in text or f'"{dependency}[' in text:
                    assert len(comment.strip()) > 10, f"{package.name}: say why beside {text.strip()}"


def hatchling(target: str, source: Path, out: Path) -> Path:
    """Build one ``target`` (sdist or wheel) of the project in ``source`` into the empty folder ``out``."""
    done = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"hatchling build -t {target} failed in {source}:\n{done.stderr}"
    (built,) = out.iterdir()
    return built


@pytest.fixture(scope="module")
def sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An sdist of every distribution, built from the working tree."""
    require("hatchling", "builds the sdists and wheels offline")
    return {
        project_table(package)["name"]: hatchling("sdist", package, tmp_path_factory.mktemp("sdist"))
        for package in PACKAGES
    }


@pytest.fixture(scope="module")
def wheels(sdists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """A wheel of every distribution, each built from its unpacked sdist alone."""
    found = {}
    for name, sdist in sdists.items():
        unpacked = tmp_path_factory.mktemp("unpacked")
        with tarfile.open(sdist) as archive:
            archive.extractall(unpacked, filter="data")
        (source,) = unpacked.iterdir()
        found[name] = zipfile.ZipFile(hatchling("wheel", source, tmp_path_factory.mktemp("wheel")))
    return found


def read(wheel: zipfile.ZipFile, suffix: str) -> str:
    """The text of the one member of ``wheel`` whose name ends with ``suffix``."""
    name = next(n for n in wheel.namelist() if n.endswith(suffix))
    return wheel.read(name).decode()


def test_sdists_carry_static_metadata(sdists: dict[str, Path]) -> None:
    for name, sdist in sdists.items():
        with tarfile.open(sdist) as archive:
            (info,) = (m for m in archive.getmembers() if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO"))
            pkg_info = archive.extractfile(info).read().decode()  # type: ignore[union-attr]
        assert f"\nName: {name}\n" in pkg_info and f"\nVersion: {VERSION}\n" in pkg_info
        assert "\nDynamic:" not in pkg_info, f"{name}: sdist metadata must be final"


def test_every_wheel_has_the_one_version(wheels: dict[str, zipfile.ZipFile]) -> None:
    assert set(wheels) == set(PROJECTS)
    for name, wheel in wheels.items():
        assert f"\nVersion: {VERSION}\n" in read(wheel, ".dist-info/METADATA"), name


def test_meta_wheel_pins_core_and_offers_each_backend_as_an_extra(wheels: dict[str, zipfile.ZipFile]) -> None:
    meta = read(wheels[META], ".dist-info/METADATA")
    assert f"Requires-Dist: {CORE}=={VERSION}\n" in meta
    assert "Requires-Dist: ray[data]" in meta
    for name in BACKENDS:
        extra = extra_name(name)
        assert f"Provides-Extra: {extra}\n" in meta
        assert f"Requires-Dist: {name}=={VERSION}; extra == '{extra}'" in meta
    plain = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any(name in line for line in plain for name in BACKENDS)  # a plain install leaves backends out


def test_backend_wheels_pin_core(wheels: dict[str, zipfile.ZipFile]) -> None:
    for name in BACKENDS:
        assert f"Requires-Dist: {CORE}=={VERSION}\n" in read(wheels[name], ".dist-info/METADATA"), name


def test_core_and_backend_wheels_declare_their_backends(wheels: dict[str, zipfile.ZipFile]) -> None:
    core = read(wheels[CORE], ".dist-info/entry_points.txt")
    jit = read(wheels["ray-zerocopy-jit"], ".dist-info/entry_points.txt")
    assert f"[{BACKEND_GROUP}]\nnn = ray_zerocopy_core.nn_backend:NNBackend" in core
    assert f"[{BACKEND_GROUP}]\njit = ray_zerocopy_jit.backend:JITBackend" in jit
    for package in PACKAGES:
        name = project_table(package)["name"]
        if name in BACKENDS:
            entry_points = read(wheels[name], ".dist-info/entry_points.txt")
            expected = f"[{BACKEND_GROUP}]\n{extra_name(name)} = {import_name(package)}."
            assert expected in entry_points, f"{name}: {entry_points!r}"


def test_wheels_are_typed(wheels: dict[str, zipfile.ZipFile]) -> None:
    for package in PACKAGES:
        name = project_table(package)["name"]
        assert f"{import_name(package)}/py.typed" in wheels[name].namelist(), name


def test_the_built_wheels_install_and_share_an_exported_program(
    wheels: dict[str, zipfile.ZipFile], tmp_path: Path
) -> None:
    """``ray-zerocopy[export]`` from the wheels built out of the sdists: installed apart, it finds its backend."""
    target = tmp_path / "site"
    paths = [wheel.filename for name, wheel in wheels.items() if name in {"ray-zerocopy", "ray-zerocopy-core"}]
    paths += [wheels["ray-zerocopy-export"].filename]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), *map(str, paths)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    script = (
        "import torch, ray_zerocopy, ray_zerocopy_export\n"
        "from ray_zerocopy_core.registry import backend_for\n"
        "ep = torch.export.export(torch.nn.Linear(2, 2), (torch.ones(1, 2),))\n"
        "print(ray_zerocopy.__version__, type(backend_for(ep)).__name__, ray_zerocopy_export.__file__)\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)}
    )
    assert ran.returncode == 0, ran.stderr
    version, backend, location = ran.stdout.split()
    assert (version, backend) == (VERSION, "ExportBackend")
    assert location.startswith(str(target)), location  # the wheel's copy, not the working tree's


def test_every_wheel_ships_the_license_its_metadata_names(wheels: dict[str, zipfile.ZipFile]) -> None:
    for name, wheel in wheels.items():
        meta = read(wheel, ".dist-info/METADATA")
        assert f"\nLicense-Expression: {PROJECTS[name]['license']}\n" in meta, name
        assert "\nLicense-File: LICENSE\n" in meta, f"{name}: no LICENSE file in its metadata"
        text = read(wheel, ".dist-info/licenses/LICENSE")
        assert PROJECTS[name]["license"] == "Apache-2.0", f"{name}: check its LICENSE against the new license"
        assert "Apache License\n                           Version 2.0, January 2004" in text, name
        assert text.rstrip().endswith("limitations under the License."), f"{name}: LICENSE is not the whole text"


#: The compiled fault explainer inside core's package, and the source it is built from.
EXPLAINER = "ray_zerocopy_core/_fault_explainer.so"
EXPLAINER_SOURCE = "src/ray_zerocopy_core/_fault_explainer.c"
CORE_TESTS = ROOT / "packages" / "ray-zerocopy-core" / "tests"

#: A protected load (a table in /dev/shm, as Ray lays it out), a JSON report, then an in-place write.
PROTECTED_LOAD = """\
import json, shutil, warnings
import torch
from shm_tables import stored_in_shared_memory, weights_table
import ray_zerocopy_core
from ray_zerocopy_core import fault_explainer, memory
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.plugin import LoadOptions
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    (weight,) = materialize(stored_in_shared_memory(weights_table(64 * 1024)), LoadOptions())
    (other,) = materialize(stored_in_shared_memory(weights_table(64 * 1024)), LoadOptions())
with open("/proc/self/maps") as maps:
    mapped = sorted({line.split()[-1] for line in maps if "explainer" in line.split()[-1].rsplit("/", 1)[-1]})
print(json.dumps({
    "package": ray_zerocopy_core.__file__,
    "compiler": [shutil.which(name) for name in ("cc", "gcc", "clang")],
    "mapped": mapped,
    "protected": len(memory.protected_ranges()),
    "equal": torch.equal(weight, torch.arange(16 * 1024, dtype=torch.float32)),
    "warnings": [str(w.message) for w in caught if "fault explainer" in str(w.message)],
}), flush=True)
weight.mul_(2.0)
print("not reached", flush=True)
"""


def without_a_compiler(tmp_path: Path) -> dict[str, str]:
    """This environment with PATH an empty folder and CC unset: no C compiler can be found."""
    empty = tmp_path / "empty-path"
    empty.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in {"CC", "RAY_ZEROCOPY_CACHE_DIR"}}
    return {**env, "PATH": str(empty), "HOME": str(tmp_path), "TMPDIR": str(tmp_path)}


def protected_load(site: Path, env: dict[str, str]) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """PROTECTED_LOAD run against the core installed in ``site``: its report, and how the process ended."""
    env = {**env, "PYTHONPATH": os.pathsep.join([str(site), str(CORE_TESTS)])}
    done = subprocess.run(
        [sys.executable, "-c", PROTECTED_LOAD], capture_output=True, text=True, env=env, timeout=300, cwd=site
    )
    assert done.stdout.startswith("{"), f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[0])
    assert report["package"].startswith(str(site)), report  # the installed copy, not the working tree's
    assert report["compiler"] == [None, None, None], report
    assert report["equal"] and report["protected"] == 2, report
    assert done.returncode == -11 and "not reached" not in done.stdout, done.stderr  # the write was stopped
    return report, done


def pip_install(*args: str, env: dict[str, str] | None = None) -> None:
    """``pip install`` offline, with no cache and this environment's hatchling; fails the test on an error."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--no-cache-dir"]
    done = subprocess.run([*command, "--no-build-isolation", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the fault explainer is built on Linux only")
def test_core_wheel_carries_the_compiled_explainer_and_says_its_platform(wheels: dict[str, zipfile.ZipFile]) -> None:
    core = wheels[CORE]
    platform_tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert Path(core.filename).name == f"ray_zerocopy_core-{VERSION}-py3-none-{platform_tag}.whl"
    assert "\nRoot-Is-Purelib: false\n" in read(core, ".dist-info/WHEEL")
    assert EXPLAINER in core.namelist()
    assert core.read(EXPLAINER)[:4] == b"\x7fELF"
    assert not [name for name in core.namelist() if name.endswith(".c")], "the C source stays in the sdist"
    for name, wheel in wheels.items():
        if name != CORE:
            assert Path(wheel.filename).name.endswith("-py3-none-any.whl"), name


def test_core_sdist_carries_the_source_and_the_build_hook_not_a_library(sdists: dict[str, Path]) -> None:
    with tarfile.open(sdists[CORE]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {EXPLAINER_SOURCE, "hatch_build.py"} <= names
    assert not [name for name in names if name.endswith(".so")], names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="write protection is Linux only")
def test_the_wheels_explainer_is_used_with_no_compiler_anywhere(
    wheels: dict[str, zipfile.ZipFile], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    pip_install("--target", str(site), wheels[CORE].filename)
    report, done = protected_load(site, without_a_compiler(tmp_path))
    assert report["mapped"] == [str(site / EXPLAINER)] and report["warnings"] == [], report
    assert done.stderr.count("read-only") == 1 and "load(writable=True)" in done.stderr, done.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="write protection is Linux only")
def test_an_install_from_the_sdist_without_a_compiler_works_and_warns_once(
    sdists: dict[str, Path], tmp_path: Path
) -> None:
    site = tmp_path / "site"
    env = without_a_compiler(tmp_path)
    pip_install("--target", str(site), str(sdists[CORE]), env=env)
    assert (site / "ray_zerocopy_core" / "fault_explainer.py").is_file()
    assert not (site / EXPLAINER).exists()
    report, done = protected_load(site, env)
    assert report["mapped"] == [], report
    (warning,) = report["warnings"]  # one, for two protected loads
    assert "_fault_explainer.so is not in the installed package" in warning, warning
    assert "still write-protected" in warning and "C compiler" in warning, warning
    assert "read-only" not in done.stderr  # stopped, without the explanation


@pytest.mark.skipif(platform.system() != "Linux", reason="manylinux is a Linux tag")
def test_core_wheel_qualifies_for_a_manylinux_tag(wheels: dict[str, zipfile.ZipFile]) -> None:
    """The library links only what manylinux allows, so ``auditwheel repair`` can tag it for PyPI."""
    require("auditwheel", "checks that core's platform wheel can be tagged manylinux")
    done = subprocess.run(
        [sys.executable, "-m", "auditwheel", "show", wheels[CORE].filename], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = re.search(r'consistent with\s+the following platform tag:\s+"(manylinux_\d+_\d+_\w+)"', done.stdout)
    assert found, done.stdout
    assert "requires no external shared libraries" in done.stdout, done.stdout
