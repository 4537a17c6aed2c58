"""Export a module to one self-contained ONNX file and check it against PyTorch.

The exporter is torch's ``torch.export``-based one (``dynamo=True``) with the
first axis of every input dynamic and the weights stored inside the file. The
parity check runs the module and ONNX Runtime (CPU) on several batch sizes and
raises :class:`ParityError` when they disagree.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from genserve.runtime import schema
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

ONNX_OPSET = 18
"""The exporter's native opset: asking for less makes torch down-convert the graph."""
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_ATOL = 1e-4

_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}

InputFactory = Callable[[int, np.random.Generator], dict[str, np.ndarray]]


class ExportError(RuntimeError):
    """The exported graph is not what the model repository expects."""


class ParityError(AssertionError):
    """ONNX Runtime's outputs differ from PyTorch's by more than the tolerance."""


STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"  # node metadata holding absolute source paths


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int = ONNX_OPSET,
    axes: Mapping[str, Mapping[int, str]] | None = None,
) -> onnx.ModelProto:
    """Export ``module`` to ``path`` with a dynamic batch axis, then check the file.

    Args:
        module: the module to export; put in eval mode.
        example_inputs: one tensor per input, with a batch of at least 2 so the
            batch axis is not specialised; a tuple of tensors (one argument of
            ``forward``) is one input per tensor.
        path: the ``.onnx`` file to write; nothing else is written beside it.
        input_names: graph input names, in the order of ``forward``'s arguments.
        output_names: graph output names, in the order ``forward`` returns them.
        opset: the ONNX opset of the default domain.
        axes: more dynamic axes besides the batch: input name -> {axis: its
            name}; inputs that name the same axis share its length.

    Returns:
        The loaded, checked model.

    Raises:
        ExportError: the file uses external data, or its names, opset or batch
            axis are not as asked.
    """
    module.eval()
    dims = {"batch": torch.export.Dim("batch", min=1, max=65536)}
    names = iter(input_names)

    def shape_of(name: str) -> dict:
        shape = {0: dims["batch"]}
        for axis, dim in (axes or {}).get(name, {}).items():
            shape[axis] = dims.setdefault(dim, torch.export.Dim(dim, min=1, max=65536))
        return shape

    shapes = [
        tuple(shape_of(next(names)) for _ in example) if isinstance(example, tuple)
        else shape_of(next(names))
        for example in example_inputs
    ]  # fmt: skip
    with _quiet_exporter() as progress:
        torch.onnx.export(
            module,
            example_inputs,
            path,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=tuple(shapes),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    logger.debug("torch.onnx.export of %s:\n%s", path.name, progress.getvalue())
    model = strip_source_paths(onnx.load(path, load_external_data=False))
    onnx.save(model, path)
    onnx.checker.check_model(model, full_check=True)
    _check_exported(model, path, input_names, output_names, opset)
    return model


def strip_source_paths(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the exporter's per-node Python stack traces, in place, and return the model.

    They name the exporting machine's absolute source paths; the computation
    is untouched.
    """
    for nodes in [model.graph.node, *(f.node for f in model.functions)]:
        for node in nodes:
            kept = [p for p in node.metadata_props if p.key != STACK_TRACE_KEY]
            if len(kept) != len(node.metadata_props):
                del node.metadata_props[:]
                node.metadata_props.extend(kept)
    return model


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[io.StringIO]:
    """Capture the exporter's progress prints and mute its known-harmless chatter.

    It prints each stage to stdout, warns that torchvision is absent (its ops are
    not used here) and raises a FutureWarning from inside torch.export.
    """
    torch_onnx_logger = logging.getLogger("torch.onnx")
    level = torch_onnx_logger.level
    torch_onnx_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()) as progress:
            warnings.simplefilter("ignore", FutureWarning)
            yield progress
    finally:
        torch_onnx_logger.setLevel(level)


def _check_exported(
    model: onnx.ModelProto,
    path: Path,
    input_names: Sequence[str],
    output_names: Sequence[str],
    opset: int,
) -> None:
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
        raise ExportError(f"{path.name} stores weights outside the file")
    got_opset = onnx_opset(model)
    if got_opset != opset:
        raise ExportError(f"{path.name} has opset {got_opset}, expected {opset}")
    signature = graph_signature(model)
    for kind, names in (("inputs", input_names), ("outputs", output_names)):
        got = [t["name"] for t in signature[kind]]
        if got != list(names):
            raise ExportError(f"{path.name} {kind} are {got}, expected {list(names)}")
        for tensor in signature[kind]:
            if tensor["shape"][0] != -1:
                raise ExportError(f"{path.name} {tensor['name']} has a fixed batch axis")


def onnx_opset(model: onnx.ModelProto) -> int:
    """The opset version of the default ONNX domain."""
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def graph_signature(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """Inputs and outputs as the model repository writes them: name, dtype, shape.

    A symbolic dimension (the batch axis) is written as -1.
    """

    def describe(value: onnx.ValueInfoProto) -> dict:
        tensor_type = value.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
        dtype = _ONNX_DTYPES.get(tensor_type.elem_type)
        if dtype is None:
            raise ExportError(f"{value.name} has unsupported element type {tensor_type.elem_type}")
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {
        "inputs": [describe(v) for v in model.graph.input],
        "outputs": [describe(v) for v in model.graph.output],
    }


SMALL_GRAPH_THREADS = 1
"""Intra-op threads for the latent families' graphs. A 28x28 decoder runs one row in
about 0.1 ms; a second thread only adds a hand-off per op and spin-waits between calls.
Decode of one row on vae-fashion, served, measured with bench/front_door.py's load: at
32 callers 0.9 against 1.4 CPU-ms per call, at one caller 1.3 against 2.5."""


def graph_spec(
    model: onnx.ModelProto,
    path: Path,
    *,
    intra_op_threads: int | None = None,
    intra_op_spinning: bool | None = None,
) -> GraphSpec:
    """The config's entry for a graph written to ``path``: its file and signature, and
    the session threading it is served with where measured to help (None: the process's)."""
    threading = {"intra_op_threads": intra_op_threads, "intra_op_spinning": intra_op_spinning}
    given = {k: v for k, v in threading.items() if v is not None}
    return schema.from_json(GraphSpec, {"file": path.name, **graph_signature(model), **given})


def cpu_session(path: Path | str | bytes) -> ort.InferenceSession:
    """An ONNX Runtime session on the CPU provider, one intra-op thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    path_or_bytes = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(path_or_bytes, options, providers=["CPUExecutionProvider"])


def check_parity(
    module: torch.nn.Module,
    onnx_model: Path | bytes,
    make_inputs: InputFactory,
    *,
    batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
    atol: float = PARITY_ATOL,
    seed: int = 0,
) -> float:
    """Run ``module`` and ONNX Runtime on the same inputs and compare every output.

    Args:
        module: the PyTorch module the graph was exported from.
        onnx_model: path to the ``.onnx`` file, or its serialized bytes.
        make_inputs: ``(batch_size, rng) -> {input name: array}``, in ``forward``'s order.
        batch_sizes: the batch sizes to try.
        atol: the largest absolute difference allowed.
        seed: seeds the generator passed to ``make_inputs``.

    Returns:
        The largest absolute difference seen over all batch sizes and outputs.

    Raises:
        ParityError: an output differs by more than ``atol``, or its shape differs.
    """
    session = cpu_session(onnx_model)
    rng = np.random.default_rng(seed)
    module.eval()
    worst = 0.0
    for batch_size in batch_sizes:
        feeds = make_inputs(batch_size, rng)
        with torch.no_grad():
            expected = module(*(torch.from_numpy(a) for a in feeds.values()))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        got = session.run(None, feeds)
        for name, want, have in zip(_output_names(session), expected, got, strict=True):
            want = want.numpy()
            if want.shape != have.shape:
                raise ParityError(f"{name}: ONNX shape {have.shape}, PyTorch {want.shape}")
            diff = float(np.max(np.abs(want - have))) if want.size else 0.0
            if not diff <= atol:  # also catches NaN
                raise ParityError(
                    f"{name} at batch size {batch_size}: max abs diff {diff:.3g} > {atol:g}"
                )
            worst = max(worst, diff)
    logger.info("parity ok on batch sizes %s: max abs diff %.3g", list(batch_sizes), worst)
    return worst


def _output_names(session: ort.InferenceSession) -> list[str]:
    return [o.name for o in session.get_outputs()]
