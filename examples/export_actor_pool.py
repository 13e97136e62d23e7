"""torch.export programs shared by a pool of actors, and from a ``.pt2`` file.

An ``ExportedProgram`` (from ``torch.export.export``, or ``torch.export.load`` of a
``.pt2`` file) is shared by the backend of the ``ray-zerocopy[export]`` extra: the
graph travels as a small weightless skeleton, and the parameters, buffers and constants
are mapped zero-copy from the object store. Each actor's ``load()`` returns an
``ExportedProgram``; ``program.module()`` runs it. The batch dimension is dynamic, so
the actors take batches of any size. The script also runs the program as Ray tasks.

Run: ``python examples/export_actor_pool.py`` (needs ``pip install 'ray-zerocopy[export]'``)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from ray_zerocopy import ActorWrapper, TaskWrapper, aliases_object_store


@ray.remote(num_cpus=0.5)
class Classifier:
    def __init__(self, wrapper: ActorWrapper) -> None:
        program: ExportedProgram = wrapper.load()  # weights alias the object store, read-only
        self.shared = all(aliases_object_store(t) for t in program.state_dict.values())
        self.module = program.module()  # built once per actor; no weight is copied

    def classify(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(batch).argmax(dim=-1)

    def weights_are_shared(self) -> bool:
        return self.shared


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)
    torch.set_num_threads(1)  # as in the actors, so results match bit for bit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.LayerNorm(64), nn.Linear(64, 5)).eval()
    example = torch.randn(8, 32)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch")},))

    # Share a program saved as a .pt2 file: load it once in the driver, then wrap it.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "classifier.pt2"
        torch.export.save(program, path)
        loaded = torch.export.load(path)

    wrapper = ActorWrapper(loaded)
    pool = [Classifier.remote(wrapper) for _ in range(3)]
    assert all(ray.get([actor.weights_are_shared.remote() for actor in pool]))

    batches = [torch.randn(n, 32) for n in (3, 8, 21, 1)]  # any batch size: the dimension is dynamic
    jobs = [pool[i % len(pool)].classify.remote(batch) for i, batch in enumerate(batches)]
    for batch, labels in zip(batches, ray.get(jobs)):
        assert torch.equal(labels, program.module()(batch).argmax(dim=-1))
    rows = sum(len(b) for b in batches)
    print(f"{len(pool)} actors labelled {rows} rows from a .pt2 ({wrapper.nbytes} bytes shared)")
    for actor in pool:  # free their CPUs for the tasks below
        ray.kill(actor)

    # Task mode: calling the wrapper runs the program's module() as a Ray task.
    remote = TaskWrapper(loaded)
    assert torch.equal(remote(batches[0]), program.module()(batches[0]))
    print("TaskWrapper: the exported program ran as a Ray task")

    ray.shutdown()


if __name__ == "__main__":
    main()
