"""The schema of a model version's ``config.json``: one set of dataclasses for both sides.

The exporters build a :class:`ModelSpec` and write it with :meth:`ModelSpec.to_json`;
the services read the file with :meth:`ModelSpec.from_json`, which checks every
field and names the bad one with its path (``graphs.decoder.inputs[0].dtype``),
quoting the bad value::

    {
      "name": "vae-fashion",        the model's name, equal to its folder's
      "family": "vae",              the family service that serves it
      "graphs": {"decoder": {"file": "decoder.onnx", "inputs": [...], "outputs": [...]}},
      "batching": {...},            BatchPolicy: the request batcher of one-shot graphs
      "stepping": {...},            StepPolicy: the step scheduler of iterative samplers
      "max_num_samples": 256,       the most samples one request may ask for
      "params": {...},              family parameters, read by the family module
      "labels": [...],              class names of class-conditional models
      "card": {...}                 the model card (Card)
    }

A spec read from a file writes back exactly the keys the file had (as
protobuf keeps field presence), so reading and writing a committed config
changes nothing, even one written before a policy gained a field. A spec
built in code writes every field it sets; None means "absent" everywhere.

``params`` stays a JSON object rather than a typed class per family: the
schema is shared and lists no family, and each family reads its parameters
in exactly one place (its family module), which names a bad one
(``params.schedule``) the way this module does.

Imports only the standard library and the step scheduler's policy, so the
exporters use it without the serving runtime.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from genserve.runtime.scheduler import StepPolicy

__all__ = [
    "DTYPES",
    "BatchPolicy",
    "Card",
    "FileRecord",
    "GraphSpec",
    "ModelConfigError",
    "ModelSpec",
    "StepPolicy",
    "TensorSpec",
    "from_json",
    "to_json",
]

DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
"""The tensor element types a graph's inputs and outputs may have."""

NOT_IN_FILE = {"json": False}
"""Field metadata: the field is not part of config.json (e.g. where a version lies)."""
EXTRA = {"extra": True}
"""Field metadata: this dict holds the object's keys that no field names (kept, in order)."""


class ModelConfigError(ValueError):
    """A config.json (or a version folder) that is wrong; the message names the field."""


@dataclass(frozen=True)
class BatchPolicy:
    """How one graph's requests are merged (the ``batching`` section)."""

    max_batch_size: int = 64
    """Most rows in one session run; 1 turns batching off."""
    max_queue_delay_ms: float = 2.0
    """Longest wait after the first request of a batch for others to join."""
    max_queue_size: int = 1024
    """Most requests waiting; one more is refused with RESOURCE_EXHAUSTED."""
    adaptive_delay: bool = True
    """Stop waiting once a batch holds as many requests as recent batches did,
    so a lone caller never pays the queue delay; False always waits the delay
    out (as Triton's dynamic batcher does) unless the batch fills."""
    max_batch_tokens: int | None = None
    """Most padded tokens (rows x padded length) in one session run, for text
    graphs batched by a token budget; None for graphs batched by rows only."""
    instances: int = 1
    """Batches run at once, each on its own session worker thread (Triton's
    instance_group count); with one intra-op thread each, one per core."""

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ValueError(f"max_queue_delay_ms must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.max_batch_tokens is not None and self.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.max_batch_tokens}")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    """The tensor's name in the ONNX graph."""
    dtype: str = field(metadata={"choices": DTYPES})
    """One of DTYPES."""
    shape: tuple[int, ...] = field(metadata={"min": -1})
    """Dimensions; -1 for a dynamic one such as the batch axis."""


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of a model (an entry of ``graphs``, keyed by its role)."""

    file: str
    """The .onnx file, relative to the version folder."""
    inputs: tuple[TensorSpec, ...] = ()
    """The graph's inputs."""
    outputs: tuple[TensorSpec, ...] = ()
    """The graph's outputs."""
    intra_op_threads: int | None = field(default=None, metadata={"min": 1})
    """Threads per run of this graph where the process leaves the choice to ONNX
    Runtime (``--intra-op-threads 0``): 1 for graphs of many tiny ops, which only
    lose time handing each op to a second thread; None for the process's setting."""
    intra_op_spinning: bool | None = None
    """False lets this graph's idle intra-op threads sleep rather than spin (the
    process's ``--no-intra-op-spinning`` turns it off for every graph); None for
    the process's setting."""


@dataclass(frozen=True)
class FileRecord:
    """What the card records of one file of the version."""

    sha256: str
    """Hex sha256 of the file's bytes; loading refuses a file that differs."""
    bytes: int | None = None
    """The file's size."""


@dataclass(frozen=True)
class Card:
    """The model card: where the model came from and how good it is."""

    description: str | None = None
    """One or two sentences on what the model is."""
    dataset: str | None = None
    """The data set it was trained on, and where that comes from."""
    command: str | None = None
    """The command line that trained and exported it."""
    seed: int | None = None
    """The seed of the weights, the shuffling and the noise."""
    epochs: float | None = None
    """Passes over the training set, fractional when a step budget cut the last short."""
    steps: int | None = None
    """Optimizer steps taken."""
    training_time_s: float | None = None
    """Wall time of the training loop."""
    hyperparameters: dict[str, Any] | None = None
    """Training settings worth stating beyond the command line."""
    metrics: dict[str, Any] | None = None
    """Quality figures (test-set metrics; ``quality`` from the evaluation)."""
    final_losses: dict[str, Any] | None = None
    """Training losses at the end of the run."""
    parity: dict[str, Any] | None = None
    """How far the ONNX graphs are from PyTorch (batch sizes, max abs diff)."""
    files: dict[str, FileRecord] | None = None
    """File name -> its sha256 and size."""
    framework: dict[str, Any] | None = None
    """Versions of what exported it (torch, ONNX opset)."""
    created_utc: str | None = None
    """When it was written, ISO 8601."""
    extra: dict[str, Any] = field(default_factory=dict, metadata=EXTRA)
    """Any other card entries, kept as they are."""


@dataclass(frozen=True)
class ModelSpec:
    """One model version's config.json."""

    family: str
    """The family that serves it, e.g. "vae"."""
    name: str | None = None
    """The model's name; equals its folder's name (None: the folder's)."""
    graphs: dict[str, GraphSpec] = field(default_factory=dict)
    """Graphs by role, e.g. "encoder"."""
    batching: BatchPolicy | None = None
    """Request batching policy of its one-shot graphs (None: the defaults)."""
    stepping: StepPolicy | None = None
    """Step scheduling policy of its iterative samplers (None: the defaults)."""
    max_num_samples: int = field(default=256, metadata={"min": 1})
    """The most samples one request may ask for."""
    params: dict[str, Any] = field(default_factory=dict)
    """Family parameters, e.g. latent_dim and image_shape; the family module reads them."""
    labels: tuple[str, ...] = ()
    """Class names, for class-conditional models."""
    card: Card | None = None
    """The model card."""
    present: frozenset[str] | None = field(
        default=None, compare=False, repr=False, metadata=NOT_IN_FILE
    )
    """The keys the file had, as dotted paths, so writing gives it back unchanged;
    None for a spec built in code, which writes every field that is not None."""

    ORDER: typing.ClassVar[tuple[str, ...]] = (
        "name", "family", "graphs", "batching", "stepping", "max_num_samples", "params",
        "labels", "card",
    )  # fmt: skip
    """The order of the keys in the file."""

    @classmethod
    def from_json(cls, raw: Any) -> ModelSpec:
        """Check a parsed config.json and build its spec.

        Raises:
            ModelConfigError: naming the bad key by its path and quoting the bad value.
        """
        present: set[str] = set()
        spec = _read(cls, "", raw, present)
        return dataclasses.replace(spec, present=frozenset(present))

    @property
    def batch_policy(self) -> BatchPolicy:
        """The request batchers' policy: the ``batching`` section, or the defaults."""
        return self.batching or BatchPolicy()

    @property
    def step_policy(self) -> StepPolicy:
        """The step workers' policy: the ``stepping`` section, or the defaults."""
        return self.stepping or StepPolicy()

    def to_json(self) -> dict[str, Any]:
        """The config.json object, keys in the file's order."""
        written = to_json(self, present=self.present)
        return {key: written[key] for key in self.ORDER if key in written}


def from_json(kind: type, raw: Any, where: str = "") -> Any:
    """Build a schema dataclass (or a policy) from parsed JSON, checking every field.

    Raises:
        ModelConfigError: naming the key at ``where`` and quoting the bad value.
    """
    return _read(kind, where, raw, set())


def to_json(value: Any, *, present: frozenset[str] | None = None, where: str = "") -> Any:
    """The JSON form of a schema value: dataclasses become objects, tuples lists.

    A field that is None is left out; with ``present`` (the keys a file had),
    so is a field equal to its default that the file did not have.
    """
    if dataclasses.is_dataclass(value):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item, path = getattr(value, f.name), _join(where, f.name)
            if not f.metadata.get("json", True) or item is None:
                continue
            if f.metadata.get("extra"):
                out.update(item)
            elif present is None or path in present or item != _default(f):
                out[f.name] = to_json(item, present=present, where=path)
        return out
    if isinstance(value, Mapping):
        return {k: to_json(v, present=present, where=_join(where, k)) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [to_json(v, present=present, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, enum.Enum):
        return value.value
    return value


# -- reading ----------------------------------------------------------------------------------


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


def _read(kind: type, where: str, raw: Any, present: set[str]) -> Any:
    """Dataclass ``kind`` from the JSON object ``raw``; adds the keys read to ``present``."""
    if not isinstance(raw, dict):
        raise ModelConfigError(f"{where or 'config.json'}: must be an object, got {raw!r}")
    fields = [f for f in dataclasses.fields(kind) if f.metadata.get("json", True)]
    extra = next((f.name for f in fields if f.metadata.get("extra")), None)
    named = {f.name: f for f in fields if not f.metadata.get("extra")}
    unknown = [k for k in raw if k not in named]
    if unknown and extra is None:
        raise ModelConfigError(
            f"{_join(where, str(unknown[0]))}: unknown key; known: {', '.join(named)}"
        )
    values: dict[str, Any] = {}
    for name, f in named.items():
        path = _join(where, name)
        if name not in raw:
            if _default(f) is dataclasses.MISSING:
                raise ModelConfigError(f"{path}: is missing, and required")
            continue
        present.add(path)
        values[name] = _read_value(path, _hints(kind)[name], raw[name], f.metadata, present)
    if extra is not None:
        values[extra] = {k: raw[k] for k in unknown}
    try:
        return kind(**values)  # the dataclass's own checks, e.g. max_batch_size >= 1
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"{where or 'config.json'}: {exc}") from None


_KINDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _read_value(where: str, hint: Any, raw: Any, meta: Mapping, present: set[str]) -> Any:
    """One JSON value read as type ``hint``, or ModelConfigError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: None is "absent"
        if raw is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _read_value(where, hint, raw, meta, present)
    if dataclasses.is_dataclass(hint):
        return _read(hint, where, raw, present)
    if origin is tuple:
        if not isinstance(raw, list):
            raise ModelConfigError(f"{where}: must be a list, got {raw!r}")
        return tuple(
            _read_value(f"{where}[{i}]", args[0], item, meta, present) for i, item in enumerate(raw)
        )
    if origin is dict:
        if not isinstance(raw, dict):
            raise ModelConfigError(f"{where}: must be an object, got {raw!r}")
        if args[1] is Any:
            return dict(raw)
        return {k: _read_value(_join(where, k), args[1], v, meta, present) for k, v in raw.items()}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [member.value for member in hint]
        if raw not in choices:
            raise ModelConfigError(f"{where}: must be one of {choices}, got {raw!r}")
        return hint(raw)
    return _scalar(where, hint, raw, meta)


def _scalar(where: str, hint: type, raw: Any, meta: Mapping) -> Any:
    accepted = (int, float) if hint is float else hint
    if isinstance(raw, bool) != (hint is bool) or not isinstance(raw, accepted):
        raise ModelConfigError(f"{where}: must be {_KINDS[hint]}, got {raw!r}")
    if "choices" in meta and raw not in meta["choices"]:
        raise ModelConfigError(f"{where}: {raw!r} is not one of {meta['choices']}")
    if "min" in meta and raw < meta["min"]:
        raise ModelConfigError(f"{where}: must be >= {meta['min']}, got {raw!r}")
    return raw  # an integer stays one where a number is asked, so it writes back the same
