"""ray-zerocopy 0.x's ``ray_zerocopy.nn`` functions, kept working: use :class:`ray_zerocopy.ModelWrapper`.

Each warns once per call and names its replacement; all are defined in :mod:`ray_zerocopy.legacy`.
"""

from ray_zerocopy.legacy import (
    load_pipeline_for_actors,
    load_pipeline_for_tasks,
    model_info_to_model_refs,
    prepare_pipeline,
    rewrite_pipeline,
)

__all__ = [
    "load_pipeline_for_actors",
    "load_pipeline_for_tasks",
    "model_info_to_model_refs",
    "prepare_pipeline",
    "rewrite_pipeline",
]
