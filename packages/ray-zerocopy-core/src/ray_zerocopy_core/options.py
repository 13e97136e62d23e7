"""Load options: how a stored model is rebuilt in a worker (the bottom floor of core)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch


@dataclass(frozen=True)
class LoadOptions:
    """How a payload is rebuilt.

    Attributes:
        device: where the rebuilt model goes; ``None`` or ``"cpu"`` keeps it zero-copy
            on the CPU, anything else costs one host-to-device copy.
        use_fast_load: skip wrapping parameters in ``nn.Parameter`` (they stay plain
            tensors); a little faster, for code that never looks at ``.parameters()``
            types.
        prefault: right after a zero-copy load, read every weight page in a background
            thread (``madvise(MADV_POPULATE_READ)``), so the first forward does not pay a
            page fault per page (4 KiB on most machines); the load itself returns as fast as without it.
        writable: give the model a private, writable copy of the weights instead of
            read-only views of shared memory.
    """

    device: str | torch.device | None = None
    use_fast_load: bool = False
    writable: bool = False
    prefault: bool = False

    @property
    def zero_copy(self) -> bool:
        """Whether the rebuilt tensors will alias the stored bytes."""
        return not self.writable and torch.device(self.device or "cpu").type == "cpu"

    def merged(self, **overrides: Any) -> LoadOptions:
        """These options with every override that is not ``None`` applied (``None`` keeps the value).

        Example::

            LoadOptions(device="cuda:0").merged(device=None, writable=True)
            # LoadOptions(device="cuda:0", use_fast_load=False, writable=True, prefault=False)
        """
        return replace(self, **{name: value for name, value in overrides.items() if value is not None})
