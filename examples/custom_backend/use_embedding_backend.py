"""Using a third-party backend: Ray actors share an ``EmbeddingTable`` (not an nn.Module).

Needs the example plugin installed first (``pip install -e examples/custom_backend``):
its entry point in the ``ray_zerocopy.backends`` group is how ray-zerocopy, in the
driver and in every worker, learns to split and rebuild this model type. Nothing else
changes: the same ``ActorWrapper`` and ``TaskWrapper`` are used as for PyTorch models.

Run: ``python examples/custom_backend/use_embedding_backend.py``
"""

from __future__ import annotations

import ray
import torch
from embedding_table_backend import EmbeddingTable

from ray_zerocopy import ActorWrapper, TaskWrapper
from ray_zerocopy_core.registry import backend_for, backend_names


@ray.remote(num_cpus=0.5)
class Neighbours:
    def __init__(self, wrapper: ActorWrapper) -> None:
        self.table = wrapper.load()  # rebuilt by EmbeddingTableBackend in this actor

    def nearest(self, word: str) -> str:
        return self.table.most_similar(word)


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    print(f"installed backends: {backend_names()}")
    words = ["cat", "dog", "car", "bus"]
    vectors = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.1], [0.0, 0.1, 1.0], [0.1, 0.0, 0.9]])
    table = EmbeddingTable(words, vectors)
    print(f"an EmbeddingTable is shared by the {backend_for(table).name!r} backend")

    wrapper = ActorWrapper(table)
    actors = [Neighbours.remote(wrapper) for _ in range(2)]
    answers = ray.get([actors[0].nearest.remote("cat"), actors[1].nearest.remote("car")])
    assert answers == ["dog", "bus"], answers
    print(f"actors: nearest('cat') = {answers[0]!r}, nearest('car') = {answers[1]!r}")

    remote_table = TaskWrapper(table, method_names=["__call__", "most_similar"])
    assert torch.equal(remote_table(["dog", "bus"]), table(["dog", "bus"]))
    assert remote_table.most_similar("bus") == "car"
    print("task mode: lookups and most_similar ran as Ray tasks")

    ray.shutdown()


if __name__ == "__main__":
    main()
