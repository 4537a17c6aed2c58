"""ONNX Runtime sessions: provider detection and a thin graph wrapper.

CUDA is used only when it can actually load. onnxruntime-gpu on a machine
without a GPU lists CUDAExecutionProvider as available and then fails to load
libcublas, so detection opens a real session on CUDA alone, quietly, once;
the result is logged in one line and reused.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@dataclass(frozen=True)
class SessionOptions:
    """How graphs are opened."""

    provider: str = "auto"
    """"auto" (CUDA when it loads, else CPU), "cuda" or "cpu"."""
    intra_op_threads: int = 0
    """Threads per session.run; 0 lets ONNX Runtime choose."""
    intra_op_spinning: bool = True
    """Whether idle intra-op threads spin waiting for work (ONNX Runtime's default);
    False lets them sleep, which costs a little latency and saves CPU on busy cores."""


@functools.cache
def _cuda_loads(probe_model: str) -> bool:
    """Whether a session on CUDA alone opens for this model file."""
    if CUDA not in ort.get_available_providers():
        return False
    options = ort.SessionOptions()
    options.log_severity_level = 4  # silence the fallback warnings of a failed load
    try:
        session = ort.InferenceSession(probe_model, options, providers=[CUDA])
    except Exception:
        return False
    return CUDA in session.get_providers()


_announced: set[str] = set()


def choose_providers(options: SessionOptions, probe_model: str) -> list[str]:
    """The execution providers for a session, CUDA first when it really works."""
    wanted = options.provider.lower()
    if wanted not in {"auto", "cuda", "cpu"}:
        raise ValueError(f"provider must be auto, cuda or cpu, got {options.provider!r}")
    use_cuda = wanted != "cpu" and _cuda_loads(probe_model)
    if wanted == "cuda" and not use_cuda:
        raise RuntimeError("provider 'cuda' was asked for but CUDAExecutionProvider does not load")
    providers = [CUDA, CPU] if use_cuda else [CPU]
    if providers[0] not in _announced:
        _announced.add(providers[0])
        logger.info("onnxruntime %s using %s", ort.__version__, providers[0])
    return providers


class Graph:
    """One ONNX graph, opened for inference.

    Args:
        path: the .onnx file.
        options: provider and threads.
    """

    def __init__(self, path: str | os.PathLike, options: SessionOptions) -> None:
        self.path = str(path)
        self.options = options
        session_options = ort.SessionOptions()
        session_options.log_severity_level = 3
        if options.intra_op_threads:
            session_options.intra_op_num_threads = options.intra_op_threads
        if not options.intra_op_spinning:
            session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = choose_providers(options, self.path)
        self._session = ort.InferenceSession(self.path, session_options, providers=providers)
        self.provider = self._session.get_providers()[0]
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the graph; returns every output keyed by name."""
        outputs = self._session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outputs, strict=True))

    def bind(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> BoundRun:
        """This graph bound to fixed buffers, for a loop that runs it many times.

        Args:
            inputs: every input by name: C-contiguous arrays the caller fills in
                place before each run.
            outputs: every output by name: C-contiguous arrays of the output's
                shape that each run writes in place.
        """
        if set(inputs) != set(self.input_names) or set(outputs) != set(self.output_names):
            raise ValueError(
                f"bind needs inputs {self.input_names} and outputs {self.output_names}, "
                f"got {sorted(inputs)} and {sorted(outputs)}"
            )
        return BoundRun(self._session, inputs, outputs)


class BoundRun:
    """A session bound once to host buffers with IO binding; :meth:`run` reuses them.

    A plain ``session.run`` converts every input, checks it and allocates every
    output on each call, which for a graph of many tiny ops (one pixel of an
    autoregressive sampler) costs about as much as the ops. Here each buffer is
    wrapped in an ``OrtValue`` that shares its memory, once; a run reads the
    inputs as they are then and writes the outputs in place. On CUDA, ONNX
    Runtime copies the host inputs to the device and the outputs back on each
    run; a sampler whose state should stay on the device binds device
    ``OrtValue``s instead (see :mod:`genserve.runtime.slots`).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        inputs: dict[str, np.ndarray],
        outputs: dict[str, np.ndarray],
    ) -> None:
        self._session = session
        self._binding = session.io_binding()
        self._values = []  # the OrtValues, which keep their arrays alive
        for names, bind in (
            (inputs, self._binding.bind_ortvalue_input),
            (outputs, self._binding.bind_ortvalue_output),
        ):
            for name, array in names.items():
                if not array.flags.c_contiguous:
                    raise ValueError(f"{name}: a bound buffer must be C-contiguous")
                value = ort.OrtValue.ortvalue_from_numpy(array)
                bind(name, value)
                self._values.append(value)

    def run(self) -> None:
        """Run the graph on the input buffers' current contents, into the output buffers."""
        self._session.run_with_iobinding(self._binding)
