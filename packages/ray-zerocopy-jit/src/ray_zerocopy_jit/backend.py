"""The TorchScript backend (placeholder until the tensor-swap backend lands)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from ray_zerocopy_core.backend import LoadOptions, ModelPayload


class JITBackend:
    """Backend for ``torch.jit.ScriptModule`` models."""

    name: ClassVar[str] = "jit"
    model_types: ClassVar[tuple[type, ...]] = (torch.jit.ScriptModule,)

    def handles(self, obj: object) -> bool:
        """TorchScript modules."""
        return isinstance(obj, torch.jit.ScriptModule)

    def extract(self, model: Any) -> ModelPayload:
        """Not implemented yet."""
        raise NotImplementedError("The jit backend is not implemented yet.")

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Not implemented yet."""
        raise NotImplementedError("The jit backend is not implemented yet.")
