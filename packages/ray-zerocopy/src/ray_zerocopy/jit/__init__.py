"""TorchScript support (needs ``pip install 'ray-zerocopy[jit]'``).

Re-exports the TorchScript wrappers (defined in ``ray_zerocopy._jit_wrappers``) and the
deprecated TorchScript functions of earlier versions, ray-zerocopy 0.x's included
(defined in :mod:`ray_zerocopy.legacy`; each warns and names its replacement).
Importing this without the jit package raises ``BackendNotInstalledError`` (an
ImportError) that names the install command.
"""

from ray_zerocopy._jit_import import import_jit

import_jit()

from ray_zerocopy._jit_wrappers import JITActorWrapper, JITModelWrapper, JITTaskWrapper  # noqa: E402
from ray_zerocopy.legacy import jit_call_model as call_model  # noqa: E402
from ray_zerocopy.legacy import jit_extract_tensors as extract_tensors  # noqa: E402
from ray_zerocopy.legacy import jit_extract_tensors_minimal as extract_tensors_minimal  # noqa: E402
from ray_zerocopy.legacy import jit_load_pipeline_for_actors as load_pipeline_for_actors  # noqa: E402
from ray_zerocopy.legacy import jit_load_pipeline_for_tasks as load_pipeline_for_tasks  # noqa: E402
from ray_zerocopy.legacy import jit_model_info_to_model_refs as model_info_to_model_refs  # noqa: E402
from ray_zerocopy.legacy import jit_prepare_pipeline_for_actors as prepare_pipeline_for_actors  # noqa: E402
from ray_zerocopy.legacy import jit_prepare_pipeline_for_tasks as prepare_pipeline_for_tasks  # noqa: E402
from ray_zerocopy.legacy import jit_replace_tensors as replace_tensors  # noqa: E402
from ray_zerocopy.legacy import jit_rewrite_pipeline as rewrite_pipeline  # noqa: E402
from ray_zerocopy.legacy import load_jit_model_in_actor, prepare_jit_model_for_actors  # noqa: E402

__all__ = [
    "JITActorWrapper",
    "JITModelWrapper",
    "JITTaskWrapper",
    "call_model",
    "extract_tensors",
    "extract_tensors_minimal",
    "load_jit_model_in_actor",
    "load_pipeline_for_actors",
    "load_pipeline_for_tasks",
    "model_info_to_model_refs",
    "prepare_jit_model_for_actors",
    "prepare_pipeline_for_actors",
    "prepare_pipeline_for_tasks",
    "replace_tensors",
    "rewrite_pipeline",
]
