"""TorchScript support (needs ``pip install 'ray-zerocopy[jit]'``).

Re-exports the TorchScript wrappers (defined in ``ray_zerocopy._jit_wrappers``) and the
legacy ``rewrite_pipeline`` for ScriptModules (defined in :mod:`ray_zerocopy.legacy`).
Importing this without the jit package raises ``BackendNotInstalledError`` (an
ImportError) that names the install command.
"""

from ray_zerocopy._jit_import import import_jit

import_jit()

from ray_zerocopy._jit_wrappers import JITActorWrapper, JITModelWrapper, JITTaskWrapper  # noqa: E402
from ray_zerocopy.legacy import jit_rewrite_pipeline as rewrite_pipeline  # noqa: E402

__all__ = ["JITActorWrapper", "JITModelWrapper", "JITTaskWrapper", "rewrite_pipeline"]
