"""Legacy TorchScript actor-mode functions: use :class:`ray_zerocopy.JITActorWrapper`.

Importing this module imports :mod:`ray_zerocopy.jit` first, which names the install
command when the jit package is missing.
"""

from ray_zerocopy.legacy import jit_load_pipeline_in_actor as load_pipeline_in_actor
from ray_zerocopy.legacy import jit_rewrite_pipeline_for_actors as rewrite_pipeline_for_actors
from ray_zerocopy.legacy import load_jit_model_in_actor, prepare_jit_model_for_actors

__all__ = [
    "load_jit_model_in_actor",
    "load_pipeline_in_actor",
    "prepare_jit_model_for_actors",
    "rewrite_pipeline_for_actors",
]
