"""Where the fault explainer comes from: only the installed package, and nothing about it can break a load.

Each case runs a protected load (a table in /dev/shm, as Ray lays it out) in a fresh
interpreter, so that the handler, the library and the once-per-process warning start
from nothing, and so that a library loaded by mistake runs only in that process.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ray_zerocopy_core
from ray_zerocopy_core import fault_explainer, memory

pytestmark = pytest.mark.skipif(not memory.protection_supported(), reason="needs Linux mprotect")
HERE = Path(__file__).parent
C_SOURCE = HERE.parent / "src" / "ray_zerocopy_core" / "_fault_explainer.c"
PACKAGE = Path(ray_zerocopy_core.__file__).parent

#: A library that looks exactly like the explainer (same functions, same interface
#: number) and, when loaded, appends its own path to MARKER from its constructor.
PLANTED_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void planted(void) {
    Dl_info info;
    const char *where = dladdr((void *)planted, &info) && info.dli_fname ? info.dli_fname : "?";
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (fd < 0) return;
    ssize_t ignored = write(fd, where, strlen(where));
    ignored = write(fd, "\n", 1);
    (void)ignored;
    close(fd);
}
int rzc_abi_version(void) { return ABI; }
int rzc_install(const char *text) { (void)text; return 0; }
int rzc_add_range(unsigned long start, unsigned long end) { (void)start; (void)end; return 0; }
void rzc_remove_range(unsigned long start) { (void)start; }
"""

#: Loads two tables (two protected loads), then reports what the process holds as JSON.
LOAD_SCRIPT = """\
import json, warnings
import torch
from shm_tables import stored_in_shared_memory, weights_table
from ray_zerocopy_core import fault_explainer, memory
from ray_zerocopy_core.loading import materialize
from ray_zerocopy_core.plugin import LoadOptions
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    (weight,) = materialize(stored_in_shared_memory(weights_table(64 * 1024)), LoadOptions())
    (other,) = materialize(stored_in_shared_memory(weights_table(64 * 1024)), LoadOptions())
with open("/proc/self/maps") as maps:
    mapped = sorted({line.split()[-1] for line in maps if "explainer" in line.split()[-1].rsplit("/", 1)[-1]})
report = {
    "library": str(fault_explainer.LIBRARY),
    "installed": fault_explainer.install(),
    "mapped": mapped,
    "protected": len(memory.protected_ranges()),
    "equal": torch.equal(weight, torch.arange(16 * 1024, dtype=torch.float32)),
    "warnings": [str(w.message) for w in caught if "fault explainer" in str(w.message)],
}
print(json.dumps(report), flush=True)
"""

#: After the report: an in-place write, which must end the process with SIGSEGV.
WRITE = 'print("writing", flush=True)\nweight.mul_(2.0)\nprint("not reached", flush=True)\n'


def compiler() -> list[str]:
    """The C compiler the planted and broken libraries are built with; skips without one."""
    command = (os.environ.get("CC") or "cc").split()
    if shutil.which(command[0]) is None:
        pytest.skip(f"needs a C compiler ({command[0]}) to build the libraries it plants")
    return command


def compile_c(source: Path, target: Path, *flags: str) -> Path:
    """``source`` compiled into the shared library ``target``."""
    done = subprocess.run(
        [*compiler(), "-shared", "-fPIC", *flags, "-o", str(target), str(source)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return target


def planted_library(folder: Path, marker: Path) -> Path:
    """An impostor of the explainer that records in ``marker`` where it was loaded from."""
    source = folder / "planted.c"
    source.write_text(PLANTED_SOURCE)
    return compile_c(source, folder / "planted.so", f'-DMARKER="{marker}"', f"-DABI={fault_explainer.ABI_VERSION}")


def run(
    script: str, env: dict[str, str], cwd: Path, pythonpath: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter with ``env`` over a cleaned environment; the core tests dir importable."""
    base = {k: v for k, v in os.environ.items() if k not in {"RAY_ZEROCOPY_CACHE_DIR", "XDG_CACHE_HOME", "CC"}}
    path = os.pathsep.join(map(str, (*pythonpath, HERE)))
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**base, "PYTHONPATH": path, **env},
    )


def report_of(done: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """The JSON report a run of LOAD_SCRIPT printed first."""
    assert done.stdout.startswith("{"), f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    report: dict[str, object] = json.loads(done.stdout.splitlines()[0])
    return report


@pytest.mark.parametrize(
    "cache",
    [
        "RAY_ZEROCOPY_CACHE_DIR",  # a cache folder the user chose
        "XDG_CACHE_HOME",  # the per-user cache under XDG
        "HOME",  # ~/.cache
        "not writable",  # no usable cache folder: the shared temp folder was next
    ],
)
def test_a_library_planted_where_the_loader_could_look_never_runs(cache: str, tmp_path: Path) -> None:
    marker = tmp_path / "planted-library-ran"
    library = planted_library(tmp_path, marker)
    home, xdg, chosen, temp, ld_path, work = (tmp_path / n for n in ("home", "xdg", "cache", "tmp", "ld", "work"))
    shared = temp / f"ray-zerocopy-{os.getuid()}"  # made by another user on a shared machine, open to all
    folders = [home / ".cache" / "ray-zerocopy", xdg / "ray-zerocopy", chosen, shared, ld_path, work]
    digest = hashlib.sha256(C_SOURCE.read_bytes() + platform.machine().encode()).hexdigest()[:16]
    for folder in folders:
        folder.mkdir(parents=True)
        for name in (f"fault_explainer-{digest}.so", fault_explainer.LIBRARY.name):  # the old name, the new one
            shutil.copy(library, folder / name)
    shared.chmod(0o777)
    (tmp_path / "a-file").write_text("")
    env = {"HOME": str(home), "TMPDIR": str(temp), "LD_LIBRARY_PATH": str(ld_path)}
    env.update(
        {
            "RAY_ZEROCOPY_CACHE_DIR": {"RAY_ZEROCOPY_CACHE_DIR": str(chosen)},
            "XDG_CACHE_HOME": {"XDG_CACHE_HOME": str(xdg)},
            "HOME": {},
            "not writable": {"RAY_ZEROCOPY_CACHE_DIR": str(tmp_path / "a-file" / "cache")},
        }[cache]
    )
    done = run(LOAD_SCRIPT, env, cwd=work)
    assert not marker.exists(), f"a planted library ran in the loading process: {marker.read_text()}"
    report = report_of(done)
    assert done.returncode == 0, done.stderr
    assert report["installed"] is None and report["warnings"] == [], report  # the package's own library works
    assert report["mapped"] == [str(PACKAGE / fault_explainer.LIBRARY.name)], report
    assert report["protected"] == 2 and report["equal"], report


def test_a_load_compiles_nothing_and_creates_no_folder(tmp_path: Path) -> None:
    """No compiler runs at load time (a fake ``cc`` first on PATH records any call), and nothing is cached."""
    home, temp, tools = tmp_path / "home", tmp_path / "tmp", tmp_path / "bin"
    for folder in (home, temp, tools):
        folder.mkdir()
    called = tmp_path / "compiler-called"
    fake = tools / "cc"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {called}\nexit 1\n')
    fake.chmod(0o755)
    env = {"HOME": str(home), "TMPDIR": str(temp), "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = run(LOAD_SCRIPT, env, cwd=tmp_path)
    report = report_of(done)
    assert not called.exists(), f"a load ran the C compiler: {called.read_text()}"
    assert not any(home.iterdir()), list(home.rglob("*"))
    assert not [p for p in temp.iterdir() if "zerocopy" in p.name], list(temp.iterdir())
    assert report["installed"] is None and report["protected"] == 2, report


def elf_for_another_machine(library: Path, target: Path) -> Path:
    """A copy of ``library`` whose ELF header names another architecture (aarch64, or x86-64 on aarch64)."""
    data = bytearray(library.read_bytes())
    other = 62 if platform.machine() == "aarch64" else 183  # EM_X86_64, EM_AARCH64
    data[18:20] = other.to_bytes(2, "little")
    target.write_bytes(bytes(data))
    return target


def stub_without(tmp_path: Path, *functions: str) -> Path:
    """A library with the explainer's functions except ``functions`` (an older or foreign build)."""
    body = {
        "rzc_abi_version": f"int rzc_abi_version(void) {{ return {fault_explainer.ABI_VERSION}; }}",
        "rzc_install": "int rzc_install(const char *t) { (void)t; return 0; }",
        "rzc_add_range": "int rzc_add_range(unsigned long s, unsigned long e) { (void)s; (void)e; return 0; }",
        "rzc_remove_range": "void rzc_remove_range(unsigned long s) { (void)s; }",
    }
    source = tmp_path / "stub.c"
    source.write_text("\n".join(text for name, text in body.items() if name not in functions) + "\n")
    return compile_c(source, tmp_path / "stub.so")


#: How each broken library is made, and what the warning must say about it.
BROKEN = {
    "missing": (lambda real, tmp: None, "_fault_explainer.so is not in the installed package"),
    "not a library": (lambda real, tmp: _write(tmp / "x.so", b"not an ELF file\n" * 64), "not an ELF shared library"),
    "truncated": (lambda real, tmp: _write(tmp / "x.so", real.read_bytes()[:1000]), "it is truncated (1000 bytes"),
    "another architecture": (lambda real, tmp: elf_for_another_machine(real, tmp / "x.so"), "another architecture"),
    "another version": (
        lambda real, tmp: compile_c(C_SOURCE, tmp / "x.so", "-DRZC_ABI_VERSION=999"),
        "implements explainer interface 999; this release needs",
    ),
    "an older release": (lambda real, tmp: stub_without(tmp, "rzc_abi_version"), "has no rzc_abi_version"),
    "a missing function": (lambda real, tmp: stub_without(tmp, "rzc_add_range"), "lacks the function rzc_add_range"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def package_copy(tmp_path: Path) -> Path:
    """A copy of the installed ray_zerocopy_core in ``tmp_path/site`` (importable first), library included."""
    site = tmp_path / "site"
    shutil.copytree(PACKAGE, site / "ray_zerocopy_core", ignore=shutil.ignore_patterns("__pycache__"))
    return site


@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_library_warns_once_and_the_load_stays_protected(broken: str, tmp_path: Path) -> None:
    real = PACKAGE / fault_explainer.LIBRARY.name
    if not real.is_file():
        pytest.fail(f"{real} is missing: reinstall ray-zerocopy-core (pip install -e) where a C compiler is available")
    make, reason = BROKEN[broken]
    if broken != "missing":
        compiler()
    site = package_copy(tmp_path)
    copied = site / "ray_zerocopy_core" / real.name
    copied.unlink()
    replacement = make(real, tmp_path)
    if replacement is not None:
        shutil.copy(replacement, copied)
    done = run(LOAD_SCRIPT + WRITE, {}, cwd=tmp_path, pythonpath=(site,))
    report = report_of(done)
    assert report["library"] == str(copied), report  # the copy was imported, not the installed package
    assert report["equal"] and report["protected"] == 2, report  # the loads worked, both protected
    (warning,) = report["warnings"]  # one, for two loads
    assert reason in str(warning) and "still write-protected" in str(warning), warning
    assert report["installed"] is not None and reason in str(report["installed"])
    assert done.returncode == -11 and "writing" in done.stdout and "not reached" not in done.stdout, done.stderr
    assert "read-only" not in done.stderr  # the write was stopped, without the explanation


def test_warnings_as_errors_do_not_fail_a_load_without_the_explainer(tmp_path: Path) -> None:
    site = package_copy(tmp_path)
    (site / "ray_zerocopy_core" / fault_explainer.LIBRARY.name).unlink(missing_ok=True)
    script = LOAD_SCRIPT.replace('simplefilter("always")', 'simplefilter("error")')
    done = run(script, {}, cwd=tmp_path, pythonpath=(site,))
    report = report_of(done)
    assert report["equal"] and report["protected"] == 2, report
    assert "the fault explainer is not available" in done.stderr, done.stderr  # logged instead
