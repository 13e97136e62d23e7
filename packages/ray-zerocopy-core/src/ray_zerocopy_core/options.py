"""Load options: how a stored model is rebuilt in a worker, and the one way to change them."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, TypedDict

import torch

from ray_zerocopy_core.errors import InvalidOptionError

if TYPE_CHECKING:
    from typing_extensions import Unpack


class LoadOverrides(TypedDict, total=False):
    """The keyword arguments every call that loads accepts; ``None`` keeps the current value.

    ``device``, ``use_fast_load``, ``writable`` and ``prefault``, as in :class:`LoadOptions`.
    """

    device: str | torch.device | None
    use_fast_load: bool | None
    writable: bool | None
    prefault: bool | None


@dataclass(frozen=True)
class LoadOptions:
    """How a payload is rebuilt.

    Attributes:
        device: where the rebuilt model goes; ``None`` or ``"cpu"`` keeps it zero-copy
            on the CPU, anything else costs one host-to-device copy.
        use_fast_load: skip wrapping parameters in ``nn.Parameter`` (they stay plain
            tensors); a little faster, for code that never looks at ``.parameters()``
            types.
        writable: give the model a private, writable copy of the weights instead of
            read-only views of shared memory.
        prefault: right after a zero-copy load, read every weight page in a background
            thread (``madvise(MADV_POPULATE_READ)``), so the first forward does not pay a
            page fault per page (4 KiB on most machines); the load itself returns as fast as without it.
    """

    device: str | torch.device | None = None
    use_fast_load: bool = False
    writable: bool = False
    prefault: bool = False

    @property
    def zero_copy(self) -> bool:
        """Whether the rebuilt tensors will alias the stored bytes."""
        return not self.writable and torch.device(self.device or "cpu").type == "cpu"

    def merged(self, **overrides: Unpack[LoadOverrides]) -> LoadOptions:
        """These options with every override that is not ``None`` applied (``None`` keeps the value).

        Example::

            LoadOptions(device="cuda:0").merged(device=None, writable=True)
            # LoadOptions(device="cuda:0", use_fast_load=False, writable=True, prefault=False)

        Raises:
            InvalidOptionError: an override names no load option.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidOptionError(
                f"Unknown load option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the load options are {', '.join(sorted(known))}."
            )
        changes: dict[str, Any] = {name: value for name, value in overrides.items() if value is not None}
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """These options as plain values (the device as a string), for pickling without torch."""
        return {
            "device": None if self.device is None else str(self.device),
            "use_fast_load": self.use_fast_load,
            "writable": self.writable,
            "prefault": self.prefault,
        }
