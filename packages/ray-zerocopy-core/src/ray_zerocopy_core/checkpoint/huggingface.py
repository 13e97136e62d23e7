"""Hugging Face ``transformers`` classes as checkpoint models (an optional dependency).

A :class:`~ray_zerocopy_core.checkpoint.Checkpoint` whose ``model`` is a transformers
class (``AutoModelForCausalLM``, ``BertModel``... or its name as a string) is built from
the ``config.json`` of the checkpoint's directory, in the dtype ``from_pretrained``
would use, and its file keys are mapped to module keys by transformers' own conversion
machinery (``transformers.conversion_mapping``, transformers 5): renamed keys cost
nothing, and the rare conversions that change bytes (fused or split tensors) are computed
one target tensor at a time. With transformers 4 keys are used as the files name them.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ray_zerocopy_core.errors import CheckpointError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install transformers"


def transformers_class(model: Any) -> type | None:
    """The transformers model class ``model`` names (a class or its name), or None for a factory.

    Raises:
        CheckpointError: ``model`` is a string but transformers is not installed or has
            no such class.
    """
    if isinstance(model, str):
        try:
            import transformers
        except ImportError as exc:
            raise CheckpointError(
                f"The checkpoint's model {model!r} names a Hugging Face transformers class, but transformers "
                f"is not installed in this process: {INSTALL_HINT}."
            ) from exc
        found = getattr(transformers, model.removeprefix("transformers."), None)
        if not isinstance(found, type):
            raise CheckpointError(
                f"transformers has no model class {model!r}. Name one such as 'AutoModelForCausalLM', or pass "
                "a zero-argument function that builds the module."
            )
        return found
    if isinstance(model, type) and model.__module__.split(".")[0] == "transformers":
        return model
    return None


def build_transformers_model(cls: type, directory: Path, dtype: torch.dtype | None, build: Any) -> nn.Module:
    """Build ``cls`` from ``directory/config.json`` inside ``build`` (the meta-parameter context).

    The default dtype while building is ``dtype``, else the config's own, as
    ``from_pretrained`` does, so that constructed buffers match its result.
    """
    import transformers

    config_file = directory / "config.json"
    if not config_file.is_file():
        raise CheckpointError(
            f"A transformers class ({cls.__name__}) needs the checkpoint's config.json, but {str(config_file)!r} "
            "does not exist. Point the Checkpoint at the directory save_pretrained wrote."
        )
    config = transformers.AutoConfig.from_pretrained(str(directory))
    config_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype, None)
    build_dtype = dtype or (config_dtype if isinstance(config_dtype, torch.dtype) else None) or torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(build_dtype)
    try:
        with build():
            # a model class is built from its config; the Auto* factories have from_config
            model = cls(config) if issubclass(cls, transformers.PreTrainedModel) else cls.from_config(config)  # type: ignore[attr-defined]
    finally:
        torch.set_default_dtype(previous)
    return model


@dataclass
class KeyConversion:
    """File keys to module keys for one transformers model, with transformers' own rules.

    :meth:`target` renames a key; keys that a byte-changing converter takes are
    collected with :meth:`collect` and turned into module tensors by :meth:`convert_groups`.
    """

    model: nn.Module
    renamings: list[Any] = field(default_factory=list)
    converters: list[Any] = field(default_factory=list)
    expected: dict[str, Any] = field(default_factory=dict)
    ignored_unexpected: list[re.Pattern[str]] = field(default_factory=list)
    _groups: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module) -> KeyConversion:
        """The conversion transformers applies when loading ``model``'s checkpoints."""
        ignored = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ()]
        expected = model.state_dict(keep_vars=True)
        try:
            from transformers.conversion_mapping import get_model_conversion_mapping
            from transformers.core_model_loading import WeightConverter, WeightRenaming
        except ImportError:  # transformers 4: no conversion machinery, keys as the files name them
            logger.debug("transformers has no conversion_mapping: checkpoint keys are used as they are")
            return cls(model, expected=expected, ignored_unexpected=ignored)
        transforms = get_model_conversion_mapping(cast(Any, model))  # a PreTrainedModel, typed as a Module here
        return cls(
            model,
            renamings=[t for t in transforms if isinstance(t, WeightRenaming)],
            converters=[t for t in transforms if isinstance(t, WeightConverter)],
            expected=expected,
            ignored_unexpected=ignored,
        )

    def target(self, key: str) -> tuple[str, str | None]:
        """The module key for file key ``key``, and the converter pattern that takes it (None: a rename)."""
        if not self.renamings and not self.converters:
            return key, None
        from transformers.core_model_loading import rename_source_key

        prefix = getattr(self.model, "base_model_prefix", None)
        renamed, pattern = rename_source_key(key, self.renamings, self.converters, prefix, self.expected)
        if renamed not in self.expected and key in self.expected:  # only the prefix needed changing
            renamed, pattern = rename_source_key(key, [], [], prefix, self.expected)
        return renamed, pattern

    def is_ignored(self, key: str) -> bool:
        """Whether transformers itself ignores ``key`` when the model does not have it."""
        return any(pattern.search(key) for pattern in self.ignored_unexpected)

    def collect(self, target: str, key: str, pattern: str, tensor: torch.Tensor) -> None:
        """Give a converter the file tensor ``key`` it needs for module key ``target``."""
        group = self._groups.get(target)
        if group is None:
            converter = next(c for c in self.converters if pattern in c.source_patterns)
            group = self._groups[target] = copy.deepcopy(converter)
        group.add_tensor(target, key, pattern, tensor)

    def convert_groups(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Each converted module tensor, one converter group at a time (computed in private memory)."""
        config = getattr(self.model, "config", None)
        for first_target, group in self._groups.items():
            try:
                converted = group.convert(first_target, model=self.model, config=config)
            except Exception as exc:
                raise CheckpointError(
                    f"transformers' conversion of the checkpoint tensors for {first_target!r} failed "
                    f"({type(exc).__name__}: {exc})."
                ) from exc
            for name, tensor in converted.items():
                yield name, tensor[0] if isinstance(tensor, list) else tensor
            del converted
        self._groups = {}
