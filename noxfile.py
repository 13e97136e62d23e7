"""Every development task of ray-zerocopy is a nox session: ``nox -l`` lists them.

torch is pinned (``TORCH_VERSION``, default 2.13.0) because an unpinned torch pulls a
multi-GB CUDA build; ``TORCH_VERSION=...`` and ``RAY_VERSION=...`` in the environment
run a session at other versions. ``tests_matrix`` runs the supported versions
(:data:`SUPPORTED`); ``tests_minimum``, which CI runs, the lowest of each.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox
from packaging.version import Version

nox.options.sessions = ["lint", "typecheck", "tests", "integration"]
nox.options.reuse_existing_virtualenvs = True

TORCH = os.environ.get("TORCH_VERSION", "2.13.0")
RAY = os.environ.get("RAY_VERSION")  # None: the newest Ray that pip finds
PACKAGES = (
    "packages/ray-zerocopy-core",
    "packages/ray-zerocopy-jit",
    "packages/ray-zerocopy",
    "packages/ray-zerocopy-export",
)
SOURCES = tuple(f"{p}/src" for p in PACKAGES)
UNIT_TESTS = tuple(f"{p}/tests" for p in PACKAGES)

#: The one table of supported versions: per dependency, (lowest, newest).
#: The lowest is what each ``packages/*/pyproject.toml`` naming the dependency declares
#: (``>=``, with a comment naming the API that sets it), checked by
#: tests_integration/test_packaging.py; ``tests_minimum`` installs every lowest version
#: together. The newest is what ``tests_matrix`` installs (``None``: the newest release
#: pip finds). To move a bound: change it here and in the pyproject files, run
#: ``nox -s tests_matrix``, and record the results in docs/compatibility.md.
SUPPORTED: dict[str, tuple[str, str | None]] = {
    "python": ("3.10", "3.13"),
    "torch": ("2.4.0", "2.14.1"),
    "ray": ("2.46.0", "2.60.0"),
    "numpy": ("1.23.2", None),
}
LOWEST = {name: low for name, (low, _) in SUPPORTED.items()}
NEWEST = {name: new for name, (_, new) in SUPPORTED.items()}
#: The interpreter of the local CPU torch wheel (2.13.0, cp311) and of the newest pair.
DEFAULT_PYTHON = "3.11"

#: The ``tests_matrix`` sessions by id, ``(python, torch, ray, numpy, integration)``: every
#: lowest version together and the newest torch with the newest Ray, each with every
#: integration test but transformers'; the default torch on the lowest and the newest
#: Python, with the fast subset CI runs (``None``: the newest release pip finds).
MATRIX: dict[str, tuple[str, str, str | None, str | None, str]] = {
    "lowest": (LOWEST["python"], LOWEST["torch"], LOWEST["ray"], LOWEST["numpy"], "all"),
    "newest": (DEFAULT_PYTHON, str(NEWEST["torch"]), NEWEST["ray"], None, "all"),
    f"python{LOWEST['python']}": (LOWEST["python"], TORCH, NEWEST["ray"], None, "fast"),
    f"python{NEWEST['python']}": (str(NEWEST["python"]), TORCH, NEWEST["ray"], None, "fast"),
}
#: Leaves out the integration tests that need transformers or torchao, which the matrix
#: does not install (their releases follow torch's): test_checkpoint.py is about
#: transformers models, test_export has a Hugging Face Llama, and one example builds a
#: BERT; test_quantized.py, the quantized example and the quantization guide's code use torchao.
WITHOUT_TRANSFORMERS = (
    "--ignore=tests_integration/test_checkpoint.py",
    "--ignore=tests_integration/test_quantized.py",
    "-k",
    "not hugging_face and not checkpoint_data_pipeline and not quantized_actors and not quantization.md",
)
#: The integration tests CI runs at the lowest versions, a few minutes: both modes, Ray
#: Data, published models (streaming generators, node affinity, the internal KV store),
#: 0.x's functions (TorchScript through Ray). tests_matrix runs the rest.
FAST_INTEGRATION = tuple(
    f"tests_integration/{name}.py" for name in ("test_nn_modes", "test_named", "test_compat_0x_functions")
)

TEST_DEPS = ("pytest>=8", "pytest-timeout>=2.3", "psutil>=5.9")
#: torchao for the quantized models (tests_integration/test_quantized.py, the example, the benchmark).
#: 0.18.0 is the newest release and runs on torch 2.13's CPU build (int8, int4's CPU layout, float8);
#: each torchao release is built for one torch release: pick its match to test another TORCH_VERSION.
TORCHAO = "torchao==0.18.0"


def interpreter(version: str) -> str:
    """Python ``version`` for nox: ``pythonX.Y`` on PATH, else pyenv's install of it (its shim may refuse)."""
    found = [shutil.which(f"python{version}")]
    found += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    for path in filter(None, found):
        if subprocess.run([path, "--version"], capture_output=True, check=False).returncode == 0:
            return path
    return version  # nox then says that it is missing


def install_project(
    session: nox.Session,
    *,
    torch: str = TORCH,
    ray: str | None = RAY,
    numpy: str | None = None,
    extras: str = "",
    ray_extras: str = "data",
) -> None:
    """Install pinned torch (and ray, numpy), then every package of this working tree (editable)."""
    session.install(f"torch=={torch}")
    pins = [f"ray[{ray_extras}]=={ray}"] if ray is not None else []
    pins += [f"numpy=={numpy}"] if numpy is not None else []
    if numpy is not None and int(numpy.split(".")[0]) < 2:
        pins.append("pyarrow<26")  # pyarrow 26 (Ray Data's) needs numpy 2 without declaring it
    if ray is not None and Version(ray) < Version("2.56.1"):
        pins.append("protobuf<7")  # Serve before 2.56.1 reads FieldDescriptor.label, which protobuf 7 removed
    if pins:
        session.install(*pins)
    session.install("-e", PACKAGES[0], "-e", PACKAGES[1], "-e", PACKAGES[3], "-e", f"{PACKAGES[2]}{extras}", *pins)


def install_integration(session: nox.Session) -> None:
    """What the integration tests use besides the project and Ray."""
    # hatchling: sdist->wheel (test_packaging); the toy backend and the example plugin: test_third_party_backend
    # tomli: tomllib for Python 3.10; auditwheel: core's wheel can be manylinux (both test_packaging)
    session.install(
        *TEST_DEPS, "safetensors", "matplotlib", "hatchling", "auditwheel", "tomli; python_version < '3.11'"
    )
    session.install("--no-deps", "tests_integration/fixtures/toy-backend", "examples/custom_backend")


def run_pytest(session: nox.Session, *paths: str) -> None:
    """Run pytest on ``paths`` (or on what the command line after ``--`` names).

    ``RAY_ZEROCOPY_REQUIRE_ALL=1``: a session installs every package its tests use, so a
    test that would skip for a missing one fails instead.
    """
    env = {"PYTHONUNBUFFERED": "1", "RAY_ZEROCOPY_REQUIRE_ALL": "1"}
    # --durations: the slowest tests in every log, to keep CI's time in view
    session.run("pytest", "--durations=15", *(session.posargs or paths), env=env)


@nox.session
def tests(session: nox.Session) -> None:
    """Unit tests of all three packages at the default versions."""
    install_project(session)
    session.install(*TEST_DEPS)
    run_pytest(session, *UNIT_TESTS)


@nox.session
@nox.parametrize(
    ("python", "torch", "ray", "numpy", "scope"),
    [(interpreter(python), torch, ray, numpy, scope) for python, torch, ray, numpy, scope in MATRIX.values()],
    ids=list(MATRIX),
)
def tests_matrix(session: nox.Session, torch: str, ray: str | None, numpy: str | None, scope: str) -> None:
    """Unit tests and integration tests (all but transformers', or the fast subset) at supported versions:
    ``nox -s "tests_matrix(lowest)"``."""
    install_project(session, torch=torch, ray=ray, numpy=numpy, extras="[jit,export]", ray_extras="data,serve")
    install_integration(session)
    if session.posargs:
        run_pytest(session)
        return
    run_pytest(session, *UNIT_TESTS)
    if scope == "fast":
        run_pytest(session, "-m", "not slow", "-k", "not hugging_face", *FAST_INTEGRATION)
    else:
        run_pytest(session, "-m", "not slow", *WITHOUT_TRANSFORMERS, "tests_integration")


@nox.session(python=interpreter(LOWEST["python"]))
def tests_minimum(session: nox.Session) -> None:
    """Unit tests and a fast integration subset at the lowest supported versions (CI runs it)."""
    install_project(
        session,
        torch=LOWEST["torch"],
        ray=LOWEST["ray"],
        numpy=LOWEST["numpy"],
        extras="[jit,export]",
        ray_extras="data,serve",  # serve brings grpcio, for the object store's memory stats
    )
    install_integration(session)
    if session.posargs:
        run_pytest(session)
        return
    run_pytest(session, *UNIT_TESTS)
    run_pytest(session, "-m", "not slow", "-k", "not hugging_face", *FAST_INTEGRATION)


@nox.session
def integration(session: nox.Session) -> None:
    """Cross-package tests on a real local Ray (examples, Ray Data, faults); slow ones: ``-- -m slow``."""
    install_project(session, extras="[jit,export]", ray_extras="data,serve")
    install_integration(session)
    # transformers: a Hugging Face model exported (test_export), checkpoints (test_checkpoint);
    # torchao: quantized models (test_quantized)
    session.install("transformers", TORCHAO, "ray[data,serve]" + (f"=={RAY}" if RAY else ""))
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
