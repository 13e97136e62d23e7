"""Every development task of ray-zerocopy is a nox session: ``nox -l`` lists them.

torch is pinned (``TORCH_VERSION``, default 2.13.0) because an unpinned torch pulls a
multi-GB CUDA build; set ``TORCH_VERSION=...`` in the environment to test another.
"""

from __future__ import annotations

import os

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "integration"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("TORCH_VERSION", "2.13.0")
PACKAGES = (
    "packages/ray-zerocopy-core",
    "packages/ray-zerocopy-jit",
    "packages/ray-zerocopy",
    "packages/ray-zerocopy-export",
)
SOURCES = tuple(f"{p}/src" for p in PACKAGES)
UNIT_TESTS = tuple(f"{p}/tests" for p in PACKAGES)

#: The versions the matrix proves: the lowest supported and the newest of each. torch
#: wheels other than the local CPU build of 2.13.0 are multi-GB CUDA builds here, so
#: the matrix names only what installs; add versions where they can be installed.
MATRIX_TORCH = ["2.13.0"]
MATRIX_RAY = ["2.43.0", "2.60.0"]
#: The lower bounds the packages declare; ``tests_minimum`` installs exactly these.
MINIMUM = {"torch": "2.13.0", "ray": "2.43.0", "numpy": "2.0.2"}
#: Pairs that cannot be installed together here, with the reason they are skipped.
INCOMPATIBLE: dict[tuple[str, str], str] = {}

TEST_DEPS = ("pytest>=8", "psutil>=5.9")
#: torchao for the quantized models (tests_integration/test_quantized.py, the example, the benchmark).
#: 0.18.0 is the newest release and runs on torch 2.13's CPU build (int8, int4's CPU layout, float8);
#: its releases follow torch's, so it moves with TORCH_VERSION.
TORCHAO = "torchao==0.18.0"


def install_project(session: nox.Session, *, torch: str = TORCH, ray: str | None = None, extras: str = "") -> None:
    """Install pinned torch (and ray), then every package of this working tree (editable)."""
    session.install(f"torch=={torch}")
    if ray is not None:
        session.install(f"ray[data]=={ray}")
    session.install("-e", PACKAGES[0], "-e", PACKAGES[1], "-e", PACKAGES[3], "-e", f"{PACKAGES[2]}{extras}")


def run_pytest(session: nox.Session, *paths: str) -> None:
    """Run pytest on ``paths`` (or on what the command line after ``--`` names).

    ``RAY_ZEROCOPY_REQUIRE_ALL=1``: a session installs every package its tests use, so a
    test that would skip for a missing one fails instead.
    """
    env = {"PYTHONUNBUFFERED": "1", "RAY_ZEROCOPY_REQUIRE_ALL": "1"}
    session.run("pytest", *(session.posargs or paths), env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests of all three packages at the default versions."""
    install_project(session)
    session.install(*TEST_DEPS)
    run_pytest(session, *UNIT_TESTS)


@nox.session
@nox.parametrize("ray", MATRIX_RAY)
@nox.parametrize("torch", MATRIX_TORCH)
def tests_matrix(session: nox.Session, torch: str, ray: str) -> None:
    """Unit tests over the supported torch x ray versions (lowest and newest)."""
    if (torch, ray) in INCOMPATIBLE:
        session.skip(INCOMPATIBLE[(torch, ray)])
    install_project(session, torch=torch, ray=ray)
    session.install(*TEST_DEPS)
    run_pytest(session, *UNIT_TESTS)


@nox.session
def tests_minimum(session: nox.Session) -> None:
    """Unit tests at the declared lower bounds of torch, ray and numpy."""
    install_project(session, torch=MINIMUM["torch"], ray=MINIMUM["ray"])
    session.install(f"numpy=={MINIMUM['numpy']}", *TEST_DEPS)
    run_pytest(session, *UNIT_TESTS)


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests on a real local Ray (examples, Ray Data, faults); slow ones: ``-- -m slow``."""
    install_project(session, extras="[jit,export]")
    # hatchling: sdist->wheel, auditwheel: core's wheel can be manylinux (test_packaging);
    # transformers: a Hugging Face model exported (test_export); torchao: quantized models (test_quantized)
    session.install(
        *TEST_DEPS, "ray[data,serve]", "safetensors", "matplotlib", "hatchling", "auditwheel", "transformers", TORCHAO
    )
    session.install("--no-deps", "tests_integration/fixtures/toy-backend", "examples/custom_backend")
    run_pytest(session, "-m", "not slow", "tests_integration")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check over the whole repository."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the three packages."""
    install_project(session)
    session.install("mypy==2.4.1", "types-psutil")
    session.run("mypy", *SOURCES)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx site with warnings as errors (docs/_build/html)."""
    install_project(session, extras="[jit]")
    session.install("-r", "docs/requirements.txt")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: share a model across 4 actors and compare with naive loading."""
    install_project(session)
    session.install("psutil>=5.9", "ray[default]")  # [default] brings grpcio, for the store's memory stats
    session.run("python", "benchmarks/demo.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (``-- --quick`` for a short run; ``-- --help`` for flags)."""
    install_project(session, extras="[jit,export]")
    session.install("psutil>=5.9", "safetensors", "matplotlib", "ray[data,default]")
    session.run("python", "benchmarks/run.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session
def bench_checkpoint(session: nox.Session) -> None:
    """From checkpoint files to the store vs plain PyTorch, ``from_pretrained`` (``-- --scale-gib 10``: scale)."""
    install_project(session)
    session.install("psutil>=5.9", "ray[default]", "transformers", "safetensors")
    session.run("python", "benchmarks/checkpoint.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session
def bench_quantized(session: nox.Session) -> None:
    """A torchao int8 model in 4 actors: shared vs quantized per actor vs ``torch.load`` (``-- --help`` for flags)."""
    install_project(session)
    session.install("psutil>=5.9", "ray[default]", TORCHAO)
    session.run("python", "benchmarks/quantized.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session
def bench_named(session: nox.Session) -> None:
    """Named models switched by multiplexed replicas vs ``torch.load`` per switch (``-- --help`` for flags)."""
    install_project(session)
    session.install("psutil>=5.9", "ray[default]")
    session.run("python", "benchmarks/multiplex.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})


@nox.session
def bench_cluster(session: nox.Session) -> None:
    """One model to K Ray nodes at once over tc-limited links (root only; ``-- --help`` for flags)."""
    if os.geteuid() != 0:
        session.error(
            "bench_cluster needs root: it builds network namespaces, veths, a bridge and tc rules "
            "(run nox as root on a machine with iproute2)"
        )
    install_project(session)
    session.install("psutil>=5.9", "ray[default]")  # [default]: grpcio, for each raylet's store stats
    session.run("python", "benchmarks/cluster.py", *session.posargs, env={"PYTHONUNBUFFERED": "1"})
