"""Built wheels: one version for all three, the jit extra, entry points in their group."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
VERSION = (ROOT / "VERSION").read_text().strip()


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    out = tmp_path_factory.mktemp("wheels")
    packages = [ROOT / "packages" / name for name in ("ray-zerocopy-core", "ray-zerocopy-jit", "ray-zerocopy")]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), *map(str, packages)], check=True
    )
    found = {}
    for wheel in out.glob("*.whl"):
        found[wheel.name.split("-")[0]] = zipfile.ZipFile(wheel)
    return found


def read(wheel: zipfile.ZipFile, suffix: str) -> str:
    name = next(n for n in wheel.namelist() if n.endswith(suffix))
    return wheel.read(name).decode()


def test_three_wheels_share_one_version(wheels: dict[str, zipfile.ZipFile]) -> None:
    assert set(wheels) == {"ray_zerocopy_core", "ray_zerocopy_jit", "ray_zerocopy"}
    for wheel in wheels.values():
        assert f"\nVersion: {VERSION}\n" in read(wheel, ".dist-info/METADATA")


def test_meta_wheel_has_the_jit_extra_and_pins_its_siblings(wheels: dict[str, zipfile.ZipFile]) -> None:
    meta = read(wheels["ray_zerocopy"], ".dist-info/METADATA")
    assert "Provides-Extra: jit" in meta
    assert f"Requires-Dist: ray-zerocopy-jit=={VERSION}; extra == 'jit'" in meta
    assert f"Requires-Dist: ray-zerocopy-core=={VERSION}\n" in meta
    assert "Requires-Dist: ray[data]" in meta
    plain = [line for line in meta.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert not any("ray-zerocopy-jit" in line for line in plain)  # a plain install leaves jit out


def test_core_and_jit_wheels_declare_their_backends(wheels: dict[str, zipfile.ZipFile]) -> None:
    core = read(wheels["ray_zerocopy_core"], ".dist-info/entry_points.txt")
    jit = read(wheels["ray_zerocopy_jit"], ".dist-info/entry_points.txt")
    assert "[ray_zerocopy.backends]\nnn = ray_zerocopy_core.backends.nn:NNBackend" in core
    assert "[ray_zerocopy.backends]\njit = ray_zerocopy_jit.backend:JITBackend" in jit


def test_wheels_are_typed(wheels: dict[str, zipfile.ZipFile]) -> None:
    for name, wheel in wheels.items():
        assert f"{name}/py.typed" in wheel.namelist()
