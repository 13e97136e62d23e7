"""Legacy actor-mode functions, kept for old code: use :class:`ray_zerocopy.ActorWrapper`."""

from ray_zerocopy.legacy import (
    load_model_in_actor,
    load_pipeline_in_actor,
    prepare_model_for_actors,
    rewrite_pipeline_for_actors,
)

__all__ = [
    "load_model_in_actor",
    "load_pipeline_in_actor",
    "prepare_model_for_actors",
    "rewrite_pipeline_for_actors",
]
