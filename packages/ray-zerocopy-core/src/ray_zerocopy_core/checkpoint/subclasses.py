"""Quantized tensors in safetensors files: torchao's flattened layout joined back into its tensors.

safetensors holds plain tensors only, so torchao (and transformers' ``save_pretrained``
with a ``TorchAoConfig``) writes each quantized tensor as its inner tensors, under keys
``<module>._<name>_<inner>`` (``layers.0.q_proj._weight_qdata``), and describes it in the
header's ``__metadata__``: its type, its flatten context and its inner tensors' names,
with a ``tensor_names`` list of every logical tensor. :func:`join_flattened_subclasses`
rebuilds those tensors with torchao's own reader, which builds only the types it allows,
around the views of the mapped files: still no copy of any weight.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ray_zerocopy_core.errors import CheckpointError
from ray_zerocopy_core.pickling import is_flattenable

if TYPE_CHECKING:
    from ray_zerocopy_core.checkpoint.files import FileTensor

#: What to install to read torchao's quantized tensors.
TORCHAO_HINT = "pip install torchao"
#: How ``torch.load(weights_only=True)`` names a global it refuses.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (torchao(?:\.\w+)+)\.(\w+) was not an allowed global")
#: The metadata entry that lists every logical tensor of torchao's layout.
_TENSOR_NAMES = "tensor_names"


def flattened_subclasses(metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The tensor subclasses that ``metadata`` (a safetensors ``__metadata__``) describes, by logical name.

    Empty for files not written in torchao's layout (any other metadata is ignored).
    """
    names = _json(metadata.get(_TENSOR_NAMES))
    if not isinstance(names, list):
        return {}
    described = {}
    for name in names:
        entry = _json(metadata.get(name)) if isinstance(name, str) else None
        if isinstance(entry, dict) and isinstance(entry.get("_tensor_data_names"), list):
            described[name] = entry
    return described


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def import_refused_torchao_class(refusal: str) -> bool:
    """Import the torchao module of a class ``torch.load(weights_only=True)`` refused; whether it now may load.

    torchao adds its tensor classes to torch's safe globals when their modules are
    imported, which a fresh process (a Ray worker) may not have done. Only modules of the
    installed ``torchao`` package are imported, and only to run that registration; the
    file decides nothing else.

    Raises:
        CheckpointError: the file holds torchao tensors but torchao is not installed.
    """
    found = _REFUSED_GLOBAL.search(refusal)
    if found is None:
        return False
    module, name = found.groups()
    try:
        imported = importlib.import_module(module)
    except ImportError as exc:
        if importlib.util.find_spec("torchao") is None:
            raise CheckpointError(
                f"The checkpoint holds torchao quantized tensors ({module}.{name}), but torchao is not installed in "
                f"this process: {TORCHAO_HINT}."
            ) from exc
        return False
    import torch

    return getattr(imported, name, None) in torch.serialization.get_safe_globals()


def join_flattened_subclasses(tensors: dict[str, FileTensor], metadata: dict[str, str]) -> dict[str, FileTensor]:
    """``tensors`` (by file key) with the inner tensors of each flattened subclass replaced by the subclass.

    The subclass takes the logical key (``layers.0.q_proj.weight``) and the path of its
    first inner tensor's file; its inner tensors stay views of the mapped files.

    Raises:
        CheckpointError: the files hold torchao's layout but torchao is not installed,
            torchao cannot rebuild a tensor, or a tensor's inner tensors are not all there.
    """
    described = flattened_subclasses(metadata)
    if not described:
        return tensors
    first = next(iter(described))
    try:
        from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    except ImportError as exc:
        raise CheckpointError(
            f"The checkpoint holds torchao quantized tensors ({first!r} is a {described[first].get('_type')}), "
            f"but torchao is not installed in this process: {TORCHAO_HINT}."
        ) from exc
    try:
        joined, _ = unflatten_tensor_state_dict({key: found.tensor for key, found in tensors.items()}, metadata)
    except Exception as exc:
        raise CheckpointError(
            f"torchao could not rebuild the quantized tensors of the checkpoint ({type(exc).__name__}: {exc}). "
            "Save it again with the torchao release installed here, or install the torchao release that saved it."
        ) from exc
    result = dict(tensors)
    for name, entry in described.items():
        module, _, attribute = name.rpartition(".")
        parts = [f"{module}._{attribute}_{inner}" for inner in entry["_tensor_data_names"]]
        tensor = joined.get(name)
        if tensor is None:
            missing = [part for part in parts if part not in tensors]
            raise CheckpointError(
                f"The checkpoint describes {name!r} as a {entry.get('_type')} made of {', '.join(parts)}, but "
                f"{', '.join(missing) or 'some of them'} {'is' if len(missing) == 1 else 'are'} not in its files. "
                "A shard is missing, or the files come from different saves: save the model again."
            )
        if not is_flattenable(tensor):
            raise CheckpointError(
                f"torchao rebuilt {name!r} of the checkpoint as a {type(tensor).__qualname__}, not a tensor subclass "
                "made of plain tensors. Save the model again with the torchao release installed here."
            )
        result[name] = replace(tensors[parts[0]], key=name, tensor=tensor)
        for part in parts:
            result.pop(part, None)
    return result
