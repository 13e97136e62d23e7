"""The torch.export backend: a weightless serialized graph plus swapped-in tensors.

An :class:`~torch.export.ExportedProgram` keeps its weights outside its graph: the
parameters and persistent buffers in ``ep.state_dict``, the non-persistent buffers and
lifted tensor constants in ``ep.constants``. Extraction serializes the program with
torch's own ``torch.export`` serializer (the one behind ``torch.export.save``) told to
leave both dictionaries, and the example inputs, out: what remains is the graph, the
graph signature, the module call graph, range constraints and metadata (the schema
dataclasses ``torch.export.save`` writes as JSON), which are pickled, compressed and
become the skeleton: kilobytes, whatever the size of the weights. Every tensor goes into the shared
:class:`~ray_zerocopy_core.plugin.TensorTable` instead, once per tensor object, so
tied weights are stored once and are one tensor again after loading.

Tensor subclasses among the weights (torchao's quantized tensors, which ``torch.export``
keeps as they are) are stored as their inner tensors: the skeleton holds them pickled
without those tensors (core's ``split_tensors``), and rebuild unflattens them around the
zero-copy inner tensors.

Rebuild deserializes the skeleton with the zero-copy tensors given as the state dict
and constants, so the program's weights, and those of the module that
``ep.module()`` builds from it, alias the object store. The rebuilt program is a
:class:`ZeroCopyExportedProgram`: an ``ExportedProgram`` that can also be called
directly (it runs a cached ``ep.module()``), which is what task mode calls.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import logging
import operator
import pickle
import threading
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from ray_zerocopy_core.plugin import (
    Backend,
    LoadOptions,
    ModelPayload,
    TensorSlot,
    UnsupportedModelError,
    build_table,
    finish_model,
    index_tensors,
    is_flattenable,
    join_tensors,
    materialize,
    split_tensors,
)

logger = logging.getLogger(__name__)

#: Version of the skeleton layout written by :func:`save_skeleton`.
SKELETON_FORMAT = 1

#: Kinds of graph outputs that write to a weight in place when the program runs
#: (``PARAMETER_MUTATION`` exists from torch 2.6 on; older programs cannot have it).
_MUTATING_OUTPUTS = tuple(
    getattr(OutputKind, kind) for kind in ("BUFFER_MUTATION", "PARAMETER_MUTATION") if hasattr(OutputKind, kind)
)
#: The tensor types a program's state may hold (``nn.Buffer`` exists from torch 2.5 on).
_PLAIN_TENSORS: tuple[type, ...] = (torch.Tensor, nn.Parameter)
if hasattr(nn, "Buffer"):
    _PLAIN_TENSORS += (nn.Buffer,)
#: Top-level modules whose pytree types need no import on the worker.
_BUILTIN_ROOTS = frozenset({"builtins", "collections", "torch", "typing"})
#: Kinds of graph inputs that are weights lifted out of the module.
_WEIGHT_INPUTS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
#: Norm ops that update their ``running_*`` arguments when called with ``training=True``
#: although their schema does not mark them as written.
_TRAINING_NORMS = (torch.ops.aten.batch_norm.default,)


@dataclass
class ProgramSkeleton:
    """Everything of an ExportedProgram except tensor bytes (see :func:`save_skeleton`).

    Attributes:
        program: the ``torch.export`` serializer's form of the program (see
            :func:`save_skeleton`), pickled and zlib-compressed.
        slots: where each table entry goes back: ``where`` is ``"state_dict"`` (parameters,
            persistent buffers) or ``"constants"`` (non-persistent buffers, lifted tensor
            constants), ``name`` the key there.
        example_inputs: the example inputs pickled with their tensors factored out (their
            tensors follow the weights in the table), or ``None`` when not kept.
        example_tensors: how many table entries, after the weights, are example inputs.
        mutated: the weights the program writes in place when it runs (see :func:`mutated_weights`).
        subclasses: the tensor subclasses among the weights (their positions in
            :func:`find_slots`'s list are ``subclass_indices``), pickled without their inner
            tensors by ``split_tensors``; their ``inner_tensors`` inner tensors follow the plain
            weights in the table. ``None`` when there are none.
        modules: modules to import before deserializing (see :func:`pytree_modules`).
        torch_version: the torch version that wrote ``program``.
        format: :data:`SKELETON_FORMAT`.
    """

    program: bytes
    slots: list[TensorSlot]
    example_inputs: bytes | None = None
    example_tensors: int = 0
    mutated: list[str] = field(default_factory=list)
    subclasses: bytes | None = None
    subclass_indices: list[int] = field(default_factory=list)
    inner_tensors: int = 0
    modules: list[str] = field(default_factory=list)
    torch_version: str = field(default_factory=lambda: torch.__version__)
    format: int = SKELETON_FORMAT

    def to_bytes(self) -> bytes:
        """The skeleton as bytes (a pickle of builtins only)."""
        state = {
            "format": self.format,
            "torch_version": self.torch_version,
            "program": self.program,
            "slots": [astuple(s) for s in self.slots],
            "example_inputs": self.example_inputs,
            "example_tensors": self.example_tensors,
            "mutated": self.mutated,
            "subclasses": self.subclasses,
            "subclass_indices": self.subclass_indices,
            "inner_tensors": self.inner_tensors,
            "modules": self.modules,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> ProgramSkeleton:
        """Read bytes written by :meth:`to_bytes`."""
        state = pickle.loads(data)
        if state.get("format") != SKELETON_FORMAT:
            raise UnsupportedModelError(
                f"This exported-program payload has skeleton format {state.get('format')!r}, but this "
                f"ray-zerocopy-export reads format {SKELETON_FORMAT}: install the same ray-zerocopy-export "
                "version on the driver and on every worker."
            )
        return cls(
            program=state["program"],
            slots=[TensorSlot(*slot) for slot in state["slots"]],
            example_inputs=state["example_inputs"],
            example_tensors=state["example_tensors"],
            mutated=state["mutated"],
            subclasses=state.get("subclasses"),
            subclass_indices=state.get("subclass_indices", []),
            inner_tensors=state.get("inner_tensors", 0),
            modules=state["modules"],
            torch_version=state["torch_version"],
            format=state["format"],
        )


def _serde() -> Any:
    """torch's ExportedProgram serialization module, the one behind ``torch.export.save``."""
    try:
        from torch._export.serde import serialize as serde
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise UnsupportedModelError(
            f"This torch ({torch.__version__}) lacks the torch.export serializer ({exc}); "
            "ray-zerocopy-export needs torch>=2.4."
        ) from exc
    return serde


def _deserializer() -> Any:
    """torch's ExportedProgram deserializer class, if it takes the weights as tensors (torch 2.4 on).

    Raises:
        UnsupportedModelError: this torch's deserializer reads the weights from bytes only
            (torch 2.3 and earlier), so the program's weights could not alias the object store.
    """
    deserializer = _serde().ExportedProgramDeserializer
    if "state_dict" not in inspect.signature(deserializer.deserialize).parameters:
        raise UnsupportedModelError(
            f"Sharing torch.export programs needs torch 2.4 or later: this torch ({torch.__version__}) "
            "rebuilds a program only from serialized bytes, so every worker would copy the weights. "
            "Upgrade torch to 2.4 or later, or share the eager nn.Module (ActorWrapper(model))."
        )
    return deserializer


#: Held while torch's serializer is told to leave the weights out on a torch whose
#: serializer cannot be asked to (see :func:`_serialize_without_weights`).
_SERIALIZER_LOCK = threading.Lock()


def _serialize_without_weights(program: ExportedProgram) -> Any:
    """torch's serialized form of ``program`` (``torch.export.save``'s), leaving out its tensors.

    Newer torch releases take ``serialize_state_dict=False`` and the like. Older ones
    (torch 2.4 among them) always ``torch.save`` the weights into bytes that the skeleton
    never keeps: a copy of the whole model on the driver. There, the module's
    ``serialize_torch_artifact`` is replaced, for this call only, by one that writes nothing.
    """
    serde = _serde()
    serializer = serde.ExportedProgramSerializer()
    enter = getattr(serde, "_enable_graph_inputs_of_type_nn_module", None) or (lambda _: nullcontext())
    with enter(program.example_inputs):
        if "serialize_state_dict" in inspect.signature(serializer.serialize).parameters:
            return serializer.serialize(
                program, serialize_state_dict=False, serialize_constants=False, serialize_example_inputs=False
            )
        with _SERIALIZER_LOCK:
            saving = serde.serialize_torch_artifact
            serde.serialize_torch_artifact = lambda *args, **kwargs: b""
            try:
                return serializer.serialize(program)
            finally:
                serde.serialize_torch_artifact = saving


def _check_program(program: ExportedProgram) -> None:
    """Refuse programs whose weights cannot be shared, saying what to do instead."""
    signature = program.graph_signature
    if signature.lifted_custom_objs:
        raise UnsupportedModelError(
            f"This ExportedProgram holds custom class objects ({', '.join(signature.lifted_custom_objs)}), "
            "which cannot be shared through the object store. Export a model whose state is tensors "
            "only, or share the eager nn.Module instead."
        )
    for where, tensors in (("state_dict", program.state_dict), ("constants", program.constants)):
        for name, value in tensors.items():
            if not isinstance(value, torch.Tensor):
                raise UnsupportedModelError(
                    f"ExportedProgram.{where}[{name!r}] is a {type(value).__qualname__}, not a tensor; only "
                    "programs whose state is tensors can be shared. Share the eager nn.Module instead."
                )
            if value.device.type == "meta":
                raise UnsupportedModelError(
                    f"ExportedProgram.{where}[{name!r}] is on the 'meta' device and holds no data. Export "
                    "the model after its weights are loaded (model.to_empty(device='cpu'), then "
                    "load_state_dict(...), then torch.export.export), or load a saved program with "
                    "torch.export.load, and wrap that."
                )
            if type(value) not in _PLAIN_TENSORS and not is_flattenable(value):
                raise UnsupportedModelError(
                    f"ExportedProgram.{where}[{name!r}] is a {type(value).__qualname__} (a tensor subclass "
                    "without __tensor_flatten__ and __tensor_unflatten__, e.g. a fake tensor from exporting "
                    "under FakeTensorMode); only real, dense tensors and subclasses that implement the "
                    "traceable-subclass protocol (torchao's quantized tensors) can be shared. Export the model "
                    "with real weights."
                )


def _argument_values(node: fx.Node, schema: Any) -> Iterator[tuple[Any, Any]]:
    """``(schema argument, value)`` for each argument of a call node."""
    for position, argument in enumerate(schema.arguments):
        if not argument.kwarg_only and position < len(node.args):
            yield argument, node.args[position]
        elif argument.name in node.kwargs:
            yield argument, node.kwargs[argument.name]


def mutated_weights(program: ExportedProgram) -> list[str]:
    """Names of the parameters, buffers and constants ``program`` writes in place when it runs.

    Found in the graph signature (mutations of a functionalized program) and in the
    graph itself (in-place ops, such as ``add_`` on ``num_batches_tracked``, on a weight
    or a view of one, and ``batch_norm`` in training mode, as the training IR that
    ``torch.export.export`` returns keeps them).
    """
    signature = program.graph_signature
    found = [spec.target for spec in signature.output_specs if spec.kind in _MUTATING_OUTPUTS and spec.target]
    lifted = {
        spec.arg.name: spec.target
        for spec in signature.input_specs
        if spec.kind in _WEIGHT_INPUTS and spec.target is not None and hasattr(spec.arg, "name")
    }
    aliases: dict[fx.Node, str] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in lifted:
            aliases[node] = lifted[node.name]
        elif node.op == "call_function" and node.target is operator.getitem and node.args[0] in aliases:
            aliases[node] = aliases[node.args[0]]
        elif node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            schema = node.target._schema
            returns_alias = any(ret.alias_info is not None for ret in schema.returns)
            for argument, value in _argument_values(node, schema):
                if not isinstance(value, fx.Node) or value not in aliases:
                    continue
                written = argument.alias_info is not None and argument.alias_info.is_write
                training_norm = node.target in _TRAINING_NORMS and argument.name.startswith("running_")
                if written or (training_norm and _argument(node, schema, "training") is True):
                    found.append(aliases[value])
                if argument.alias_info is not None and returns_alias:
                    aliases[node] = aliases[value]
    return list(dict.fromkeys(found))


def _argument(node: fx.Node, schema: Any, name: str) -> Any:
    return next((value for argument, value in _argument_values(node, schema) if argument.name == name), None)


def find_slots(program: ExportedProgram) -> tuple[list[TensorSlot], list[tuple[str, torch.Tensor]]]:
    """The weight slots of ``program`` and its distinct tensors, each listed once.

    A tensor object reachable under several names (tied weights) gets one index, so it
    is one tensor object again after loading.
    """
    parameters = set(program.graph_signature.parameters)
    return index_tensors(
        (where, name, tensor, name in parameters)
        for where, named in (("state_dict", program.state_dict), ("constants", program.constants))
        for name, tensor in named.items()
    )


def split_subclasses(
    tensors: list[tuple[str, torch.Tensor]], indices: list[int]
) -> tuple[bytes | None, list[tuple[str, torch.Tensor]]]:
    """The tensor subclasses at ``indices`` of ``tensors`` pickled without their inner tensors, and those.

    ``None`` and no tensors when there are none. The inner tensors are named after the
    weight and their attribute path is not kept (the names serve error messages only).
    """
    if not indices:
        return None, []
    pickled, inner = split_tensors([tensors[i][1] for i in indices])
    first = tensors[indices[0]][0]
    return pickled, [(f"inner tensor {j} of the tensor subclasses (first: {first!r})", t) for j, t in enumerate(inner)]


def _example_inputs(program: ExportedProgram) -> tuple[bytes | None, list[tuple[str, torch.Tensor]]]:
    """The example inputs pickled without their tensors, and those tensors; ``None`` if not shareable."""
    examples = program.example_inputs
    if examples is None:
        return None, []
    try:
        pickled, tensors = split_tensors(examples)
        build_table([(f"example input {i}", t) for i, t in enumerate(tensors)])  # checks each is shareable
    except Exception as exc:
        logger.debug("example inputs of the ExportedProgram are not kept: %s", exc)
        return None, []
    return pickled, [(f"example input {i}", t.detach()) for i, t in enumerate(tensors)]


def pytree_modules(program: ExportedProgram) -> list[str]:
    """Modules defining the container types of the program's inputs and outputs.

    A type used in the call spec (a Hugging Face ``ModelOutput``, a dataclass...) is
    registered with torch's pytree when its module is imported; a worker must import
    it before deserializing the program, or deserialization fails.
    """
    specs = [program.call_spec.in_spec, program.call_spec.out_spec]
    for entry in program.module_call_graph:
        if entry.signature is not None:
            specs += [entry.signature.in_spec, entry.signature.out_spec]
    modules: dict[str, None] = {}
    stack = [spec for spec in specs if spec is not None]
    while stack:
        spec = stack.pop()
        module = getattr(spec.type, "__module__", None)
        if module and module.split(".")[0] not in _BUILTIN_ROOTS:
            modules[module] = None
        stack.extend(spec.children() if hasattr(spec, "children") else spec.children_specs)  # 2.4: no children()
    return list(modules)


def _import_pytree_modules(modules: list[str]) -> None:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnsupportedModelError(
                f"This ExportedProgram's inputs or outputs use types from {module!r}, which cannot be "
                f"imported on this worker ({exc}). Install the same packages on every worker as on the driver."
            ) from exc


def save_skeleton(program: ExportedProgram) -> bytes:
    """``program`` without tensor bytes: torch's serialized form, pickled and compressed.

    The serialized form is what ``torch.export.save`` writes as JSON (the schema
    dataclasses of ``torch._export.serde.schema``); pickling those dataclasses instead
    of going through JSON makes a worker's load several times faster, since reading
    the JSON back resolves type hints for every node.
    """
    try:
        serialized = _serialize_without_weights(program)
        data = pickle.dumps(serialized.exported_program, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise UnsupportedModelError(
            f"torch.export could not serialize this ExportedProgram ({type(exc).__name__}: {exc}). "
            "Programs that torch.export.save cannot save cannot be shared either; check that "
            "torch.export.save(ep, io.BytesIO()) works."
        ) from exc
    return zlib.compress(data, 6)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector in this block (restored after, even on error).

    Deserializing a program and building its module create tens of thousands of small
    objects; in a Ray worker, whose heap is already large, each collection they trigger
    walks that heap, which can double the time of the whole load. Nothing is leaked:
    the collector runs again as usual after the block.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


#: Serializes the first ``cached_module()`` call of any program (a module-level lock keeps
#: the programs themselves copyable with ``copy.deepcopy``).
_MODULE_LOCK = threading.Lock()


class ZeroCopyExportedProgram(ExportedProgram):
    """An :class:`~torch.export.ExportedProgram` rebuilt around object-store weights.

    It is an ordinary ``ExportedProgram`` (``ep.module()``, ``ep.graph``,
    ``ep.state_dict`` work as usual, and its tensors alias shared memory), with one
    addition: calling it runs ``ep.module()``, built once on first call and cached.
    Task mode calls models this way; in an actor, ``ep(x)`` and ``ep.module()(x)``
    give the same result.
    """

    _zerocopy_module: nn.Module | None

    def module(self, *args: Any, **kwargs: Any) -> Any:
        """``ExportedProgram.module()``, built with the garbage collector paused (see :func:`gc_paused`).

        Its parameters, buffers and constants are this program's tensors: no weight is copied.
        Arguments go to torch's own ``module()`` (``check_guards=`` where this torch has it).
        """
        with gc_paused():
            return super().module(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the program (its cached ``module()``) on ``args``."""
        return self.cached_module()(*args, **kwargs)

    def cached_module(self) -> nn.Module:
        """``self.module()``, built on first use and reused: its tensors alias this program's."""
        module = self.__dict__.get("_zerocopy_module")
        if module is None:
            with _MODULE_LOCK:
                module = self.__dict__.get("_zerocopy_module")
                if module is None:
                    module = self.module()
                    self.__dict__["_zerocopy_module"] = module
        return module

    @classmethod
    def adopt(cls, program: ExportedProgram) -> ZeroCopyExportedProgram:
        """Turn ``program`` (a freshly deserialized ExportedProgram) into this class, in place."""
        program.__class__ = cls
        program.__dict__["_zerocopy_module"] = None
        return program  # type: ignore[return-value]


def _rebuild_dicts(slots: list[TensorSlot], tensors: list[torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``state_dict`` and ``constants`` from the materialized tensors (parameters already ``nn.Parameter``)."""
    state_dict: dict[str, Any] = {}
    constants: dict[str, Any] = {}
    for slot in slots:
        value = tensors[slot.index]
        if not slot.is_parameter and isinstance(value, nn.Parameter):
            value = value.detach()  # a tensor that is a parameter here and a constant there
        (state_dict if slot.where == "state_dict" else constants)[slot.name] = value
    return state_dict, constants


class ExportBackend(Backend):
    """Backend for ``torch.export.ExportedProgram`` objects.

    Example::

        backend = ExportBackend()
        payload = backend.extract(torch.export.export(model, (x,)))
        program = backend.rebuild(payload, LoadOptions())   # weights alias payload.table
        program.module()(x)
    """

    name: ClassVar[str] = "export"
    model_types: ClassVar[tuple[type, ...]] = (ExportedProgram,)

    def extract(self, model: Any) -> ModelPayload:
        """Serialize ``model``'s graph without weights; index its tensors' bytes (no copy).

        Raises:
            UnsupportedModelError: ``model`` holds weights that cannot be shared (meta or
                fake tensors, custom class objects), or cannot be serialized by ``torch.export``,
                or this torch is older than 2.4 (see :func:`_deserializer`).
        """
        _deserializer()  # refuse here, on the driver, what no worker could rebuild
        _check_program(model)
        slots, tensors = find_slots(model)
        subclass_indices = [i for i, (_, tensor) in enumerate(tensors) if is_flattenable(tensor)]
        subclasses, inner = split_subclasses(tensors, subclass_indices)
        plain = [named for i, named in enumerate(tensors) if i not in set(subclass_indices)]
        example_pickle, example_tensors = _example_inputs(model)
        table = build_table([*plain, *inner, *example_tensors])
        mutated = mutated_weights(model)
        skeleton = ProgramSkeleton(
            program=save_skeleton(model),
            slots=slots,
            example_inputs=example_pickle,
            example_tensors=len(example_tensors),
            mutated=mutated,
            subclasses=subclasses,
            subclass_indices=subclass_indices,
            inner_tensors=len(inner),
            modules=pytree_modules(model),
        ).to_bytes()
        if mutated:
            warnings.warn(
                f"This ExportedProgram updates {', '.join(mutated)} in place when it runs (typically "
                "BatchNorm statistics of a model exported in training mode). Shared weights are "
                "read-only, so it can only be loaded with writable=True; export the model after "
                "model.eval() to share it zero-copy.",
                UserWarning,
                stacklevel=2,
            )
        logger.debug("export skeleton: %d bytes, %d slots", len(skeleton), len(slots))
        return ModelPayload(self.name, skeleton, table)

    def rebuild(self, payload: ModelPayload, options: LoadOptions) -> Any:
        """Deserialize the skeleton around zero-copy tensors; returns a :class:`ZeroCopyExportedProgram`.

        Raises:
            UnsupportedModelError: the program writes weights in place and the load is
                zero-copy (read-only), or this worker's torch cannot read the program.
        """
        skeleton = ProgramSkeleton.from_bytes(payload.skeleton)
        if skeleton.mutated and options.zero_copy:
            raise UnsupportedModelError(
                f"This ExportedProgram writes {', '.join(skeleton.mutated)} in place when it runs, but zero-copy "
                "weights are read-only shared memory. Export the model after model.eval() (so BatchNorm "
                "statistics are not updated), or load a private copy with writable=True."
            )
        # torch.export's verifier requires parameters to be nn.Parameter, fast load or not.
        subclass_indices = set(skeleton.subclass_indices)
        n_distinct = 1 + max((slot.index for slot in skeleton.slots), default=-1)
        plain_indices = [i for i in range(n_distinct) if i not in subclass_indices]
        table_index = {i: position for position, i in enumerate(plain_indices)}
        parameters = {
            table_index[slot.index] for slot in skeleton.slots if slot.is_parameter and slot.index in table_index
        }
        tensors = materialize(payload.table, options, parameters=parameters)
        weights: list[Any] = [None] * n_distinct
        for i, position in table_index.items():
            weights[i] = tensors[position]
        n_plain = len(plain_indices)
        if skeleton.subclasses is not None:
            inner = tensors[n_plain : n_plain + skeleton.inner_tensors]
            for i, subclass in zip(skeleton.subclass_indices, join_tensors(skeleton.subclasses, inner)):
                weights[i] = subclass
        n_weights = n_plain + skeleton.inner_tensors
        state_dict, constants = _rebuild_dicts(skeleton.slots, weights)
        example_inputs: Any = None
        if skeleton.example_inputs is not None:
            example_inputs = join_tensors(skeleton.example_inputs, tensors[n_weights:])
        deserializer = _deserializer()
        _import_pytree_modules(skeleton.modules)
        try:
            with gc_paused():
                serialized = pickle.loads(zlib.decompress(skeleton.program))
                program = deserializer().deserialize(serialized, state_dict, constants, example_inputs or b"")
        except Exception as exc:
            raise UnsupportedModelError(
                f"Could not rebuild the ExportedProgram ({type(exc).__name__}: {exc}). It was exported "
                f"with torch {skeleton.torch_version} and this worker has torch {torch.__version__}; "
                "install the same torch version on the driver and on every worker."
            ) from exc
        return finish_model(ZeroCopyExportedProgram.adopt(program))
