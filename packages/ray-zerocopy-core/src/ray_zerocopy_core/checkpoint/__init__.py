"""Checkpoints: a model described by its files, shared without ever holding it in private memory.

:class:`Checkpoint` says where a model's weights are on disk and how to build its
structure. Sharing it (``ActorWrapper.from_checkpoint``, ``publish(name, checkpoint)``)
reads it with :class:`~ray_zerocopy_core.checkpoint.reader.CheckpointReader`: the
weights go from the files' pages straight into the object store. The package holds
the reader (``reader``), the file formats (``files``: safetensors, ``torch.save``, the
conversion spool) and the Hugging Face transformers support (``huggingface``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ray_zerocopy_core.checkpoint.reader import read_payload
from ray_zerocopy_core.errors import InvalidOptionError
from ray_zerocopy_core.plugin import ModelPayload

#: What a checkpoint's ``model`` may be: a zero-argument factory, a transformers class, or its name.
ModelFactory = Callable[[], nn.Module] | type | str


@dataclass(frozen=True)
class Checkpoint:
    """A model on disk: its weight files and how to build the module they belong to.

    Share it with ``ActorWrapper.from_checkpoint(checkpoint)`` (or ``TaskWrapper`` /
    ``ModelWrapper.from_checkpoint``), ``publish(name, checkpoint)`` or
    ``get_or_publish(name, checkpoint)``, or use it as a model attribute of a pipeline.
    The weights go from the files straight into the object store: the reading process
    never holds a private copy (see :mod:`ray_zerocopy_core.checkpoint`).

    Example::

        from ray_zerocopy import ActorWrapper, Checkpoint

        wrapper = ActorWrapper.from_checkpoint(Checkpoint("gpt2-dir/", AutoModelForCausalLM))
        wrapper = ActorWrapper.from_checkpoint(Checkpoint("classifier.pt", lambda: Classifier(classes=10)))

    Attributes:
        path: a ``.safetensors`` file; a directory of them (sharded or not, as
            ``save_pretrained`` writes); a ``torch.save``'d state dict (``.pt``, ``.pth``,
            ``.bin``, or a directory with ``pytorch_model.bin.index.json``), read with
            ``weights_only=True``; or a ``ray.train.Checkpoint`` whose directory is one of
            these. The path is read where the model is shared (for ``publish``: the
            holder's task, on its node).
        model: a zero-argument callable that builds the module (called with parameters
            on the ``meta`` device, so it costs no memory), or a Hugging Face transformers
            model class (``AutoModelForCausalLM``, ``BertModel``...) or its name as a
            string, in which case ``path`` is a ``save_pretrained`` directory and its
            ``config.json`` defines the model.
        dtype: ``None`` stores the weights as the files hold them; a floating-point dtype
            converts every floating-point weight while streaming (one tensor at a time).
            The result equals the built model after ``.to(dtype)`` for a factory, and
            ``from_pretrained(..., dtype=dtype)`` for a transformers class.
        strict: as in ``load_state_dict``: every key in the files must be one the model
            has, and every parameter and persistent buffer must be in the files. With
            ``strict=False`` extra keys in the files are skipped and buffers the files
            lack keep their built values; parameters must always be in the files.
    """

    path: Any
    model: ModelFactory
    dtype: torch.dtype | None = None
    strict: bool = True

    #: A checkpoint opens into the eager backend's payload (a :class:`~ray_zerocopy_core.plugin.ModelSource`).
    backend_name: ClassVar[str] = "nn"

    def __post_init__(self) -> None:
        if isinstance(self.model, nn.Module):
            raise InvalidOptionError(
                f"Checkpoint(model=...) takes a function that builds the module (e.g. lambda: "
                f"{type(self.model).__name__}(...)), not a built module: its weights would exist twice. To share "
                "a module you have built and loaded already, use ActorWrapper(model) or from_model."
            )
        if not (callable(self.model) or isinstance(self.model, str)):
            raise InvalidOptionError(
                f"Checkpoint(model=...) must be a zero-argument function that builds the module, or a "
                f"transformers model class (or its name); got {type(self.model).__qualname__}."
            )
        if self.dtype is not None and not (isinstance(self.dtype, torch.dtype) and self.dtype.is_floating_point):
            raise InvalidOptionError(
                f"Checkpoint(dtype=...) must be None or a floating-point torch.dtype such as torch.bfloat16, "
                f"got {self.dtype!r}."
            )

    def open_payload(self) -> AbstractContextManager[ModelPayload]:
        """Read the files into the eager backend's payload, its bytes views of the files (see the reader)."""
        return read_payload(self)

    def __str__(self) -> str:
        model = self.model if isinstance(self.model, str) else getattr(self.model, "__qualname__", repr(self.model))
        return f"Checkpoint({_describe_path(self.path)!r}, {model})"


def _describe_path(path: Any) -> str:
    return str(path.path if callable(getattr(path, "as_directory", None)) else path)
