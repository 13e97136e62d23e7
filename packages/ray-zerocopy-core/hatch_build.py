"""Build hook of ray-zerocopy-core: compiles the SIGSEGV explainer (one C file) into the package.

Why a hatchling custom hook: every distribution here already builds with hatchling,
and the explainer is a plain shared library loaded with ctypes, not a Python
extension module. A setuptools ``Extension`` would tie the wheel to one Python
version (``cp312-cp312``) for a file that has no Python ABI, and meson-python or
scikit-build-core would add a build system and its tools for a single ``cc`` call.
This hook is that call: the wheel gets the library and the tag ``py3-none-<platform>``.

- A wheel (``pip wheel``, ``python -m build``, or pip building one from the sdist):
  the library is compiled into a private temporary folder and added to the wheel as
  ``ray_zerocopy_core/_fault_explainer.so``.
- An editable install (``pip install -e``): the library is compiled into the source
  tree next to ``fault_explainer.py`` (ignored by git); install again after editing
  the C file to rebuild it.
- No C compiler (``cc``, or ``$CC``), a failed compile, or a platform other than Linux
  (where weights are not write-protected): the build still succeeds, without the
  library, and the wheel stays ``py3-none-any``. ray-zerocopy then warns once, at the
  first protected load, that a write will be stopped without the message naming its cause.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: The C source, relative to this project's root.
SOURCE = Path("src/ray_zerocopy_core/_fault_explainer.c")
#: Where the library lies inside the installed package; fault_explainer.py loads it from there only.
LIBRARY = "ray_zerocopy_core/_fault_explainer.so"
#: Seconds a compile may take before the build gives up on it.
COMPILE_TIMEOUT = 120


def platform_tag() -> str:
    """The wheel platform tag of this interpreter's platform, ``linux_x86_64`` say."""
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def compile_library(source: Path, target: Path) -> str | None:
    """Compile ``source`` into the shared library ``target``; None on success, else why not.

    The compiler writes a temporary file beside ``target``, renamed over it once
    complete, so a process loading ``target`` meanwhile never sees half a library.
    """
    compiler = shlex.split(os.environ.get("CC") or "cc")
    if not compiler or shutil.which(compiler[0]) is None:
        return f"no C compiler found ({' '.join(compiler) or '$CC is blank'}; set CC to use another)"
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    command = [*compiler, "-O2", "-fPIC", "-shared", "-s", "-o", str(partial), str(source)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=COMPILE_TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        partial.unlink(missing_ok=True)
        return f"{shlex.join(command)} failed: {exc}"
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        return f"{shlex.join(command)} failed (exit {done.returncode}): {done.stderr.strip()}"
    os.replace(partial, target)
    return None


class FaultExplainerBuildHook(BuildHookInterface):
    """Adds the compiled explainer to core's wheel (or to the source tree, for an editable install)."""

    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        """Compile the library before hatchling collects the wheel's files."""
        self._scratch: str | None = None
        if not sys.platform.startswith("linux"):
            self.app.display_info(f"ray-zerocopy-core: no fault explainer is built on {sys.platform}")
            return
        source = Path(self.root) / SOURCE
        if version == "editable":
            target = Path(self.root) / "src" / LIBRARY
        else:
            self._scratch = tempfile.mkdtemp(prefix="ray-zerocopy-core-build-")
            target = Path(self._scratch) / Path(LIBRARY).name
        problem = compile_library(source, target)
        if problem is not None:
            if version == "editable":
                target.unlink(missing_ok=True)  # a library left by an earlier install is not this source's
            self.app.display_warning(
                f"ray-zerocopy-core: building without the fault explainer: {problem}. "
                "Writes to shared weights are still stopped, without the message naming the cause."
            )
            return
        if version != "editable":
            build_data["force_include"][str(target)] = LIBRARY
            build_data["pure_python"] = False
            build_data["tag"] = f"py3-none-{platform_tag()}"

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        """Remove the temporary folder the library was compiled in."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
