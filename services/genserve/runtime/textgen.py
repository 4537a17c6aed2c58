"""Text generation on a step worker: what the text families (lstm, gpt) share.

A text family subclasses :class:`TextModel` and owns its graph, its
per-slot state (an LSTM's h and c, a GPT's key/value cache) and a step that
turns a batch of :class:`TextSample` into next-token logits, prefilling the
prompt of each sample that joins. :class:`TextModel` reads the config's
network and vocabulary and serves Generate and GenerateStream; its
:class:`TextGenerator` does the rest, the same for every text family:

- :meth:`~TextGenerator.samples` checks a request (prompt, sampler settings,
  stop sequences) and gives each sample its state, with its own generator
  seeded by (seed, sample index), so its text never depends on the batch;
- :meth:`~TextGenerator.advance` draws every sample's next token from the
  step's logits (:func:`genserve.runtime.tokens.draw`), follows its stop
  sequences and says which samples are done, and why (:class:`FinishReason`);
- :meth:`~TextGenerator.generate` and :meth:`~TextGenerator.generate_stream`
  run the samples on the worker; the stream sends each sample's new text as
  soon as no stop sequence can still claim it.

Token metrics (tokens generated, time to first token, inter-token latency,
finish reasons) are recorded here, once for every text family.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import numpy as np

from genserve.runtime import metrics, sampling
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.model import (
    GENERATE,
    GENERATE_STREAM,
    GenerateParams,
    LoadContext,
    Output,
    ServedModel,
    StreamEvent,
    TextStats,
)
from genserve.runtime.repository import ModelConfig
from genserve.runtime.scheduler import Sequence
from genserve.runtime.stepper import StepWorker
from genserve.runtime.tokens import FinishReason, StopText, draw
from genserve.runtime.vocab import CharVocabulary

MAX_STOP_SEQUENCES = 8
"""Stop sequences one request may give."""
MAX_STOP_CHARS = 64
"""Characters one stop sequence may have."""
DEFAULT_MAX_NEW_TOKENS = 200
DEFAULT_TEMPERATURE = 1.0


@dataclass(eq=False)
class TextSample:
    """One sample's state between steps, as the text family's step sees it."""

    prompt: np.ndarray
    """int64 (P,) token ids of the prompt."""
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    """Tokens it generates at most (already cut to what the model's context leaves)."""
    stop: StopText
    rng: np.random.Generator = field(repr=False)
    tokens: list[int] = field(default_factory=list)
    """Generated token ids; empty until its first step, which prefills the prompt."""
    finish: FinishReason | None = None
    added: float = field(default_factory=time.monotonic)
    last_token_at: float = 0.0

    @property
    def prefilled(self) -> bool:
        """Whether its prompt has run (its state is in its slot): it has a token."""
        return bool(self.tokens)

    @property
    def length(self) -> int:
        """Tokens in its context so far: prompt plus generated."""
        return len(self.prompt) + len(self.tokens)


class TextGenerator:
    """A text model's request checks and sampling rule.

    Args:
        model: the model's name, for metrics.
        vocab: its vocabulary.
        max_prompt_chars: the longest prompt accepted.
        max_new_tokens: the largest max_new_tokens accepted.
        context: the most tokens (prompt plus generated) the model attends to;
            None for no limit (a recurrent model).
    """

    def __init__(
        self,
        model: str,
        vocab: CharVocabulary,
        *,
        max_prompt_chars: int,
        max_new_tokens: int,
        context: int | None = None,
    ) -> None:
        self.vocab = vocab
        self.max_prompt_chars = max_prompt_chars
        self.max_new_tokens = max_new_tokens
        self.context = context
        self._model = model
        self._tokens = metrics.TOKENS_GENERATED.labels(model=model)
        self._first = metrics.TIME_TO_FIRST_TOKEN.labels(model=model)
        self._between = metrics.INTER_TOKEN_LATENCY.labels(model=model)

    # -- requests ------------------------------------------------------------------------------

    def samples(self, params: GenerateParams) -> list[TextSample]:
        """Each sample's starting state, the request checked against the model.

        Raises:
            InvalidArgument: naming the field: an empty, over-long or unknown-character
                prompt; max_new_tokens above the cap; too many or too long stop sequences.
        """
        prompt = self._prompt(params.prompt)
        sampler = params.sampler
        wanted = sampler.max_new_tokens
        if wanted is None:
            wanted = min(DEFAULT_MAX_NEW_TOKENS, self.max_new_tokens)
        if wanted > self.max_new_tokens:
            raise InvalidArgument(
                "sampler.max_new_tokens", f"must be at most {self.max_new_tokens}, got {wanted}"
            )
        room = wanted if self.context is None else min(wanted, self.context - len(prompt))
        stops = self._stops(sampler.stop_sequences)
        temperature = DEFAULT_TEMPERATURE if sampler.temperature is None else sampler.temperature
        return [
            TextSample(
                prompt=prompt,
                temperature=float(temperature),
                top_k=int(sampler.top_k or 0),
                top_p=1.0 if sampler.top_p is None else float(sampler.top_p),
                max_new_tokens=room,
                stop=StopText(stops),
                rng=np.random.default_rng([params.seed, 3, i]),
            )
            for i in range(params.num_samples)
        ]

    def _prompt(self, text: str) -> np.ndarray:
        if not text:
            raise InvalidArgument("prompt", "must not be empty: give the text to continue")
        if len(text) > self.max_prompt_chars:
            raise InvalidArgument(
                "prompt", f"has {len(text)} characters; at most {self.max_prompt_chars}"
            )
        prompt = self.vocab.encode(text, "prompt")
        if self.context is not None and len(prompt) >= self.context:
            raise InvalidArgument(
                "prompt", f"has {len(prompt)} tokens; the model's context holds {self.context}"
            )
        return prompt

    @staticmethod
    def _stops(stops: tuple[str, ...]) -> tuple[str, ...]:
        field_name = "sampler.stop_sequences"
        if len(stops) > MAX_STOP_SEQUENCES:
            raise InvalidArgument(field_name, f"at most {MAX_STOP_SEQUENCES}, got {len(stops)}")
        for i, stop in enumerate(stops):
            if not 1 <= len(stop) <= MAX_STOP_CHARS:
                raise InvalidArgument(
                    f"{field_name}[{i}]",
                    f"must have 1 to {MAX_STOP_CHARS} characters, got {len(stop)}",
                )
        return stops

    # -- steps (in the executor) ---------------------------------------------------------------

    def advance(self, samples: list[TextSample], logits: np.ndarray) -> list[bool]:
        """Draw each sample's next token from its logits (B, V); which samples are done."""
        chosen = draw(
            logits,
            np.array([s.temperature for s in samples]),
            np.array([s.top_k for s in samples], np.int64),
            np.array([s.top_p for s in samples]),
            np.array([s.rng.random() for s in samples]),
        )
        now = time.monotonic()
        done = []
        for sample, token in zip(samples, chosen.tolist(), strict=True):
            if sample.tokens:
                self._between.observe(now - sample.last_token_at)
            else:
                self._first.observe(now - sample.added)
            sample.last_token_at = now
            sample.tokens.append(token)
            if sample.stop.push(self.vocab.chars[token]):
                sample.finish = FinishReason.STOP
            elif len(sample.tokens) >= sample.max_new_tokens:
                sample.finish = FinishReason.LENGTH
            done.append(sample.finish is not None)
        self._tokens.inc(len(samples))
        return done

    # -- calls ---------------------------------------------------------------------------------

    async def generate(self, worker: StepWorker, params: GenerateParams) -> Output:
        """Run every sample to its end; the texts and their stats."""
        samples = self.samples(params)
        try:
            await sampling.run_all(worker, samples, params.deadline)
        finally:
            self._count_finished(samples)
        return self._output(samples)

    async def generate_stream(
        self, worker: StepWorker, params: GenerateParams
    ) -> AsyncIterator[StreamEvent]:
        """Each sample's new text as it is produced, then the result."""
        samples = self.samples(params)
        steps = sampling.each_step(worker, samples, params.deadline)
        try:
            async with contextlib.aclosing(steps):  # a caller that leaves frees the slots now
                async for index, finished in steps:
                    piece = samples[index].stop.unsent(final=finished)
                    if piece:
                        yield StreamEvent(token=(index, piece))
        finally:
            self._count_finished(samples)
        yield StreamEvent(result=self._output(samples))

    def _count_finished(self, samples: list[TextSample]) -> None:
        for sample in samples:
            if sample.finish is None:  # the caller went away, or the deadline passed
                sample.finish = FinishReason.CANCELLED
            metrics.TEXTS_FINISHED.labels(model=self._model, reason=sample.finish.value).inc()

    @staticmethod
    def _output(samples: list[TextSample]) -> Output:
        return Output(
            texts=[s.stop.text for s in samples],
            text_stats=[
                TextStats(s.finish or FinishReason.CANCELLED, len(s.prompt), len(s.tokens))
                for s in samples
            ],
        )


class TextModel(ServedModel):
    """A character-level text model served one token per step; a family adds its step.

    Args:
        config: the version's config; ``params.network`` must give every name
            in ``network_keys`` and ``params.vocabulary`` the characters.
        context: how to open graphs.
        context_length: the most tokens the model attends to; None for no limit.
    """

    calls = (GENERATE, GENERATE_STREAM)
    network_keys: tuple[str, ...] = ()
    """The network sizes the family needs from ``params.network``."""

    def __init__(
        self, config: ModelConfig, context: LoadContext, *, context_length: int | None = None
    ) -> None:
        super().__init__(config, context)
        params = config.params
        network = params.get("network", {})
        self.network = {key: int(network.get(key, 0)) for key in self.network_keys}
        if not (all(self.network.values()) and params.get("vocabulary")):
            raise InvalidArgument("params", f"model {config.name} lacks its network or vocabulary")
        cap = 2048 if context_length is None else context_length - 1
        self.text = TextGenerator(
            config.name,
            CharVocabulary(params["vocabulary"]),
            max_prompt_chars=int(params.get("max_prompt_chars", cap)),
            max_new_tokens=int(params.get("max_new_tokens", cap)),
            context=context_length,
        )
        self.worker = self.stepped("tokens", self.step)

    @property
    def slots(self) -> int:
        """Samples running at once: the rows the family's per-slot state needs."""
        return self.worker.scheduler.policy.max_running

    def step(self, batch: list[Sequence]) -> list[bool]:
        """Every running sample's next token (prefilling those that join); which are done."""
        raise NotImplementedError

    async def generate(self, params: GenerateParams) -> Output:
        return await self.text.generate(self.worker, params)

    def generate_stream(
        self, params: GenerateParams, preview_every_steps: int
    ) -> AsyncIterator[StreamEvent]:
        return self.text.generate_stream(self.worker, params)
