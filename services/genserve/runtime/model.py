"""What a family implements: a served model version and its plain-Python types.

Servicers convert protobuf to these types and back; samplers, batchers and
families never see protobuf.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np

from genserve.runtime import errors
from genserve.runtime.batcher import RequestBatcher
from genserve.runtime.repository import ModelConfig
from genserve.runtime.schema import GraphSpec
from genserve.runtime.session import Graph, SessionOptions
from genserve.runtime.stepper import Step, StepWorker
from genserve.runtime.tokens import FinishReason

# RPC names a model may support, as ModelCall and the CLI spell them.
GENERATE = "Generate"
GENERATE_STREAM = "GenerateStream"
ENCODE = "Encode"
DECODE = "Decode"
RECONSTRUCT = "Reconstruct"
COMPLETE = "Complete"
ALL_CALLS = (GENERATE, GENERATE_STREAM, ENCODE, DECODE, RECONSTRUCT, COMPLETE)


@dataclass(frozen=True)
class SamplerParams:
    """Sampler settings; None means the model's default."""

    steps: int | None = None
    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    max_new_tokens: int | None = None
    stop_sequences: tuple[str, ...] = ()
    truncation: float | None = None
    eta: float | None = None


@dataclass(frozen=True)
class GenerateParams:
    """One checked Generate request."""

    num_samples: int
    seed: int
    class_labels: np.ndarray | None = None
    """int64 (num_samples,), already broadcast from one label when needed."""
    prompt: str = ""
    latents: np.ndarray | None = None
    """float32 (num_samples, latent_dim) given by the caller."""
    sampler: SamplerParams = field(default_factory=SamplerParams)
    deadline: float | None = None
    """time.monotonic() after which the caller has gone."""


@dataclass(frozen=True)
class TextStats:
    """How one generated text ended and what it took."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Output:
    """Generated or decoded samples."""

    images: np.ndarray | None = None
    """float32 (N, C, H, W) in [0, 1]."""
    texts: list[str] | None = None
    text_stats: list[TextStats] | None = None
    """One per text."""
    latents: np.ndarray | None = None
    """float32 (N, latent_dim): the codes the images came from, for latent families."""


@dataclass
class Encoding:
    """Codes of encoded inputs."""

    embeddings: np.ndarray
    """float32 (N, D)."""
    log_variance: np.ndarray | None = None
    """float32 (N, D), for variational models."""


@dataclass
class StreamEvent:
    """One event of GenerateStream; exactly one field is set."""

    progress: tuple[int, int] | None = None
    """(step, total_steps)."""
    token: tuple[int, str] | None = None
    """(sample_index, text)."""
    preview: np.ndarray | None = None
    result: Output | None = None


class LoadContext:
    """What families need to open graphs and build workers: options, executor, overrides.

    Args:
        session_options: provider and threads for every graph.
        executor: where blocking session runs and sampler steps go.
        batching_overrides: BatchPolicy fields that replace each model's own.
        stepping_overrides: StepPolicy fields that replace each model's own.
    """

    def __init__(
        self,
        session_options: SessionOptions,
        executor: Executor | None = None,
        batching_overrides: dict[str, Any] | None = None,
        stepping_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.session_options = session_options
        self.executor = executor
        self.batching_overrides = dict(batching_overrides or {})
        self.stepping_overrides = dict(stepping_overrides or {})

    def open_graph(self, config: ModelConfig, role: str) -> Graph:
        """Open one graph of a model version."""
        if role not in config.graphs:
            raise errors.GenserveError(f"model {config.name} has no graph {role!r}")
        return Graph(config.graph_path(role), self.graph_options(config.graphs[role]))

    def graph_options(self, spec: GraphSpec) -> SessionOptions:
        """The process's session options with the graph's own threading settings applied.

        An operator's explicit thread count wins over the graph's; spinning is off
        when either turns it off.
        """
        options = self.session_options
        if spec.intra_op_threads and not options.intra_op_threads:
            options = dataclasses.replace(options, intra_op_threads=spec.intra_op_threads)
        if spec.intra_op_spinning is False:
            options = dataclasses.replace(options, intra_op_spinning=False)
        return options

    def batched_graph(self, config: ModelConfig, role: str) -> RequestBatcher:
        """Open one graph behind a request batcher (not started)."""
        graph = self.open_graph(config, role)
        policy = dataclasses.replace(config.batch_policy, **self.batching_overrides)
        return RequestBatcher(
            graph.run, policy, model=config.name, graph=role, executor=self.executor
        )

    def step_worker(self, config: ModelConfig, sampler: str, step: Step) -> StepWorker:
        """A step worker (not started) running `step` for one of the model's samplers."""
        policy = dataclasses.replace(config.step_policy, **self.stepping_overrides)
        return StepWorker(step, policy, model=config.name, sampler=sampler, executor=self.executor)


class Worker(Protocol):
    """What a served model starts and closes: a request batcher or a step worker."""

    def start(self) -> None: ...

    async def close(self) -> None: ...


class ServedModel:
    """One loaded model version. Families subclass it and override their calls.

    Args:
        config: the checked config of the version.
        context: how to open graphs.
    """

    family: ClassVar[str] = ""
    calls: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        self.config = config
        self.context = context
        self.workers: list[Worker] = []

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def latent_dim(self) -> int:
        return int(self.config.params.get("latent_dim", 0))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.config.params.get("image_shape", ()))

    def batched(self, role: str) -> RequestBatcher:
        """Open a graph behind a batcher that this model starts and closes."""
        batcher = self.context.batched_graph(self.config, role)
        self.workers.append(batcher)
        return batcher

    def stepped(self, sampler: str, step: Step) -> StepWorker:
        """A step worker for one iterative sampler, started and closed with this model."""
        worker = self.context.step_worker(self.config, sampler, step)
        self.workers.append(worker)
        return worker

    async def start(self) -> None:
        """Start background work (batchers, step workers); called once after loading."""
        for worker in self.workers:
            worker.start()

    async def close(self) -> None:
        """Finish queued and running work and stop background work."""
        for worker in self.workers:
            await worker.close()

    def _unsupported(self, call: str) -> errors.Unimplemented:
        return errors.Unimplemented(self.name, self.family, call, list(self.calls))

    async def generate(self, params: GenerateParams) -> Output:
        raise self._unsupported(GENERATE)

    async def generate_stream(
        self, params: GenerateParams, preview_every_steps: int
    ) -> AsyncIterator[StreamEvent]:
        """Stream events; one-shot families only send the final result."""
        yield StreamEvent(result=await self.generate(params))

    async def encode(
        self, images: np.ndarray | None, texts: list[str], deadline: float | None
    ) -> Encoding:
        raise self._unsupported(ENCODE)

    async def decode(self, latents: np.ndarray, deadline: float | None) -> Output:
        raise self._unsupported(DECODE)

    async def reconstruct(self, images: np.ndarray, deadline: float | None) -> Output:
        raise self._unsupported(RECONSTRUCT)

    async def complete(
        self, images: np.ndarray, mask: np.ndarray, params: GenerateParams
    ) -> Output:
        raise self._unsupported(COMPLETE)


def sample_latents(
    seed: int, num_samples: int, latent_dim: int, truncation: float | None = None
) -> np.ndarray:
    """Standard normal latents from a seed; with truncation, redraw |z| > truncation.

    Returns:
        float32 (num_samples, latent_dim), the same for the same arguments.
    """
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num_samples, latent_dim), dtype=np.float32)
    if truncation is not None:
        outside = np.abs(z) > truncation
        while outside.any():
            z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
            outside = np.abs(z) > truncation
    return z


def deadline_from(time_remaining_s: float | None) -> float | None:
    """A time.monotonic() deadline from a gRPC context's time_remaining()."""
    return None if time_remaining_s is None else time.monotonic() + time_remaining_s
