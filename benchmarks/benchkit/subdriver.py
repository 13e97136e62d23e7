"""Second driver for methods configured by environment (see ``probe.measure_in_subprocess``).

Usage: ``python -m benchkit.subdriver '<json request>'``; prints ``RESULT <json>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray
import torch

from benchkit.methods import METHODS, fresh_model
from benchkit.models import spec_from_dict
from benchkit.probe import measure_load, reference_output


def main(request: dict[str, object]) -> None:
    """Connect to the cluster at ``request['address']`` and measure one point."""
    ray.init(address=str(request["address"]), log_to_driver=False)
    try:
        method = METHODS[str(request["method"])]
        spec = spec_from_dict(request["spec"])  # type: ignore[arg-type]
        handoff = Path(str(request["handoff"]))
        model = fresh_model(spec)
        model.load_state_dict(torch.load(handoff, weights_only=True))
        model.eval().requires_grad_(False)
        handoff.unlink()
        point = measure_load(
            method, spec, model, int(request["actors"]), Path(str(request["workdir"])), reference_output(model)
        )  # type: ignore[call-overload]
        print("RESULT " + json.dumps(point.to_dict()), flush=True)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
