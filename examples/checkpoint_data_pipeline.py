"""Batch inference with Ray Data over a model shared straight from a ``save_pretrained`` directory.

``ActorWrapper.from_checkpoint(Checkpoint(directory, "BertForSequenceClassification"))``
builds the model's structure without weights, streams the weights from the files into
the object store (never a private copy in this process) and drops the files' page
cache. The ``map_batches`` actor pool then loads the stored model as with any wrapper:
each actor maps the same read-only weights.

The checkpoint here is a small BERT classifier with random weights, saved to a
temporary directory; in real use the directory is a trained model or a downloaded
snapshot. Needs ``transformers``.

Run: ``python examples/checkpoint_data_pipeline.py``
"""

from __future__ import annotations

import tempfile

import numpy as np
import ray
import torch
from transformers import BertConfig, BertForSequenceClassification

from ray_zerocopy import ActorWrapper, Checkpoint, aliases_object_store

SEQUENCE_LENGTH = 16
CONFIG = BertConfig(
    vocab_size=1000,
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    max_position_embeddings=64,
    num_labels=3,
)


class Labeller:
    """The per-actor callable Ray Data builds once per pool member."""

    def __init__(self, wrapper: ActorWrapper) -> None:
        self.model = wrapper.load()
        assert all(aliases_object_store(p) for p in self.model.parameters()), "weights were copied"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        input_ids = torch.as_tensor(np.stack(batch["input_ids"]), dtype=torch.long)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids).logits
        return {"id": batch["id"], "label": logits.argmax(dim=1).numpy()}


def save_checkpoint(directory: str) -> BertForSequenceClassification:
    """Write a small random BERT classifier as ``save_pretrained`` does; return it for reference."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(CONFIG).eval()
    model.save_pretrained(directory)
    return model


def main() -> None:
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False)

    with tempfile.TemporaryDirectory() as directory:
        reference = save_checkpoint(directory)
        # the class by name: the process creating the Checkpoint need not import transformers
        wrapper = ActorWrapper.from_checkpoint(Checkpoint(directory, "BertForSequenceClassification"))
    # the weights are in the object store now: the files are no longer needed

    rng = np.random.default_rng(0)
    rows = [{"id": i, "input_ids": rng.integers(0, CONFIG.vocab_size, SEQUENCE_LENGTH)} for i in range(96)]
    predictions = ray.data.from_items(rows).map_batches(
        Labeller,
        fn_constructor_kwargs={"wrapper": wrapper},
        batch_size=24,
        compute=ray.data.ActorPoolStrategy(size=2),
        num_cpus=0.5,
    )
    result = predictions.to_pandas().sort_values("id")

    with torch.no_grad():
        input_ids = torch.as_tensor(np.stack([r["input_ids"] for r in rows]))
        expected = reference(input_ids=input_ids).logits.argmax(dim=1).numpy()
    assert (result["label"].to_numpy() == expected).all(), "the pool's labels differ from the saved model's"
    print(
        f"labelled {len(result)} rows from a checkpoint shared by 2 actors "
        f"({wrapper.nbytes / 2**20:.1f} MiB stored once); label counts: {np.bincount(expected).tolist()}"
    )

    ray.shutdown()


if __name__ == "__main__":
    main()
