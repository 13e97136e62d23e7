"""Device placement: load the shared model onto a GPU when there is one, else the CPU.

``device="cuda:0"`` makes ``load()`` copy the weights once from the object store to the
GPU (the object store holds them on the host). On the CPU, the default, the model reads
the shared memory directly. The actor asks Ray for a GPU only when the cluster has one.
Without a GPU the script runs on the CPU and says so.

Run: ``python examples/gpu_placement.py``
"""

from __future__ import annotations

import ray
import torch
from torch import nn

from ray_zerocopy import ActorWrapper


@ray.remote
class Predictor:
    def __init__(self, wrapper: ActorWrapper, device: str) -> None:
        self.device = device
        self.model = wrapper.load(device=device)  # a per-call override of the wrapper's device

    def predict(self, x: torch.Tensor) -> tuple[str, torch.Tensor]:
        with torch.no_grad():
            out = self.model(x.to(self.device))
        return str(next(self.model.parameters()).device), out.cpu()


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    has_gpu = torch.cuda.is_available() and ray.cluster_resources().get("GPU", 0) >= 1
    device = "cuda:0" if has_gpu else "cpu"
    if not has_gpu:
        print("No CUDA GPU found: running on the CPU (zero-copy) instead of cuda:0.")

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).eval()
    wrapper = ActorWrapper(model, device=device)  # the default for every load()

    resources = {"num_gpus": 1} if has_gpu else {"num_cpus": 0.5}
    actor = Predictor.options(**resources).remote(wrapper, device)
    x = torch.randn(4, 8)
    where, out = ray.get(actor.predict.remote(x))
    with torch.no_grad():
        assert torch.allclose(out, model(x), atol=1e-5)
    print(f"the actor's model ran on {where}")

    ray.shutdown()


if __name__ == "__main__":
    main()
