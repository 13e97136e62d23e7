"""Legacy TorchScript actor-mode functions: use :class:`ray_zerocopy.JITActorWrapper`."""

from ray_zerocopy_jit.legacy import (
    load_jit_model_in_actor,
    load_pipeline_in_actor,
    prepare_jit_model_for_actors,
    rewrite_pipeline_for_actors,
)

__all__ = [
    "load_jit_model_in_actor",
    "load_pipeline_in_actor",
    "prepare_jit_model_for_actors",
    "rewrite_pipeline_for_actors",
]
