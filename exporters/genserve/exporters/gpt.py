"""Character-level GPT on Shakespeare's plays, exported with a key/value cache.

Trains ``gpt_model.Gpt`` on windows of ``context`` characters of the training
plays, measures the validation loss in nats per character (every window of
the held-out plays, each position predicting the next) and each block's
largest absolute activation, exports ``gpt.onnx`` (``gpt_model.GptStep``:
new tokens, past keys and values, past length -> logits, present), checks it
against PyTorch for prompt passes and cached steps, and checks that greedy
decoding through the cache matches full recomputation token for token::

    python -m genserve.exporters.gpt --out models --name gpt-shakespeare \\
        --version 1 --epochs 3 --learning-rate 2e-3 --seed 0 --threads 1

``--softmax-one`` trains the "softmax + 1" attention variant (the committed
``gpt1-shakespeare``: the same command with ``--name gpt1-shakespeare
--softmax-one``).
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from genserve.exporters import onnx_export, pipeline, text_training, training
from genserve.exporters.gpt_model import (
    Gpt,
    GptConfig,
    GptStep,
    activation_peaks,
    next_token_loss,
    past_names,
)
from genserve.exporters.quality_report import Evaluation
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.gpt"
GRAPH = "gpt"
GREEDY_TOKENS = 64
"""Tokens the export check decodes greedily through the cache and by full recomputation."""
VALIDATION_BATCH = 32
PEAK_WINDOWS = 8
"""Validation windows the activation peaks are measured on."""


@torch.no_grad()
def validation_nats(model: Gpt, tokens: torch.Tensor) -> float:
    """Mean next-character loss over every window of the validation text."""
    model.eval()
    context = min(model.config.context, len(tokens) - 1)  # a short text: one window of it all
    starts = text_training.window_starts(tokens, context)
    total, count = 0.0, 0
    for i in range(0, len(starts), VALIDATION_BATCH):
        x, y = text_training.window_batch(tokens, starts[i : i + VALIDATION_BATCH], context)
        total += next_token_loss(model, x, y).item() * y.numel()
        count += y.numel()
    return round(total / count, 4)


def export_graph(model: Gpt, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
    """Write ``gpt.onnx`` and check it: prompt passes, cached steps, greedy decoding."""
    config, graph = model.config, GptStep(model).eval()
    path = folder / f"{GRAPH}.onnx"
    names = past_names(config.layers)

    def make_inputs(batch: int, rng: np.random.Generator, new: int = 5, past: int = 7) -> dict:
        shape = (batch, config.heads, past, config.head_dim)
        return {
            "tokens": rng.integers(0, config.vocab_size, (batch, new), dtype=np.int64),
            "past_length": rng.integers(0, past + 1, batch, dtype=np.int64),
            **{name: rng.standard_normal(shape).astype(np.float32) for name in names},
        }

    arrays = [torch.from_numpy(a) for a in make_inputs(2, np.random.default_rng(0)).values()]
    example = (arrays[0], arrays[1], tuple(arrays[2:]))
    with warnings.catch_warnings():  # the inputs share the batch and past Dims
        warnings.filterwarnings("ignore", r".*The axis name: \w+ will not be used", UserWarning)
        onnx_model = onnx_export.export_onnx(
            graph, example, path, input_names=["tokens", "past_length", *names],
            output_names=["logits", "present"],
            axes={"tokens": {1: "new"}, **{name: {2: "past"} for name in names}},
        )  # fmt: skip
    flat = _FlatStep(graph)  # check_parity passes one tensor per graph input
    diffs = {
        "prompt_max_abs_diff": onnx_export.check_parity(
            flat, path, lambda b, rng: make_inputs(b, rng, new=9, past=0)
        ),
        "step_max_abs_diff": onnx_export.check_parity(
            flat, path, lambda b, rng: make_inputs(b, rng, new=1, past=config.context - 1)
        ),
    }
    mismatch = greedy_mismatch(model, path)
    if mismatch is not None:
        raise onnx_export.ParityError(f"cached greedy decoding differs at token {mismatch}")
    spec = {GRAPH: onnx_export.graph_spec(onnx_model, path)}
    batch_sizes = list(onnx_export.PARITY_BATCH_SIZES)
    parity = {"batch_sizes": batch_sizes, "max_abs_diff": max(diffs.values()), **diffs}
    return spec, {**parity, "greedy_tokens_match": GREEDY_TOKENS}


class _FlatStep(torch.nn.Module):
    """:class:`GptStep` taking the cache as separate arguments, as the graph does."""

    def __init__(self, step: GptStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, tokens: torch.Tensor, past_length: torch.Tensor, *past: torch.Tensor):
        return self.step(tokens, past_length, past)


@torch.no_grad()
def greedy_mismatch(model: Gpt, path: Path) -> int | None:
    """The first token where greedy decoding through the graph and a cache the size of the
    context (as the service keeps it) differs from PyTorch recomputing the whole text; None
    if none does."""
    session = onnx_export.cpu_session(path)
    config = model.config
    ids = [1, 2, 3]
    names = past_names(config.layers)
    cache = np.zeros((len(names), 1, config.heads, config.context, config.head_dim), "f4")
    feeds = {name: cache[i, :, :, :0] for i, name in enumerate(names)}
    logits, present = session.run(
        None, {"tokens": np.array([ids]), "past_length": np.zeros(1, np.int64), **feeds}
    )
    feeds = {name: cache[i] for i, name in enumerate(names)}
    for i in range(min(GREEDY_TOKENS, config.context - len(ids))):
        cache[:, 0, :, len(ids) - present.shape[4] : len(ids)] = present[0].reshape(
            len(names), config.heads, -1, config.head_dim
        )
        want = int(model(torch.tensor([ids]))[0, -1].argmax())
        if int(logits[0].argmax()) != want:
            return i
        step = {"tokens": np.array([[want]]), "past_length": np.array([len(ids)], np.int64)}
        logits, present = session.run(None, {**step, **feeds})
        ids.append(want)
    return None


class GptExporter(text_training.TextExporter):
    """The GPT's hooks: next-character loss, activation peaks, the cached graph."""

    family = "gpt"
    prog = PROG
    default_name = "gpt-shakespeare"
    evaluation = Evaluation(
        sampling="the card's sample: temperature 0.8, seed 0", max_validation_nats=1.55
    )
    parser_options = {"epochs": 3, "batch_size": 32, "learning_rate": 2e-3}
    model_class = Gpt
    config_flags = ("context", "layers", "heads", "width", "softmax_one")
    max_running = 32

    def default_configs(self) -> tuple[GptConfig, training.TrainConfig]:
        return GptConfig(), training.TrainConfig(epochs=3, batch_size=32, learning_rate=2e-3)

    def fit(self, model: Gpt, run: pipeline.Run) -> pipeline.Trained:
        vocab = model.vocabulary
        train = text_training.tokens_of(run.train, vocab)
        result = text_training.train_next_char(
            model, train, run.train_config, run.seed, shift_windows=True
        )
        validation = text_training.tokens_of(text_training.validation_text(run), vocab)
        nats = validation_nats(model, validation)
        window = min(model.config.context, len(validation) - 1)
        windows, _ = text_training.window_batch(
            validation, text_training.window_starts(validation, window)[:PEAK_WINDOWS], window
        )
        metrics = {
            "final_train_nats_per_char": round(result.last_epoch_loss, 4),
            "validation_nats_per_char": nats,
            "validation_bits_per_char": round(nats / math.log(2), 4),
            "activation_peak_per_layer": activation_peaks(model, windows),
            "parameters": sum(p.numel() for p in model.parameters()),
            "sample": text_training.card_sample(
                text_training.sample_text(
                    lambda ids: _last_logits(model, ids),
                    vocab,
                    tokens=_card_tokens(model.config.context),
                )
            ),
        }
        return pipeline.Trained(result, metrics)

    def export(self, model: Gpt, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_graph(model, folder)

    def description(self, model: Gpt, run: pipeline.Run) -> str:
        config, count = model.config, sum(p.numel() for p in model.parameters())
        attention = '"softmax + 1" attention' if config.softmax_one else "softmax attention"
        return (
            f"Character-level GPT ({config.layers} blocks, {config.heads} heads, width "
            f"{config.width}, context {config.context}, {attention}, {count:,} parameters, "
            f"{config.vocab_size} characters) trained on {run.dataset_name}; gpt.onnx takes "
            "new tokens with past keys and values and returns the new tokens' keys and values."
        )

    def limits(self, model: Gpt) -> dict[str, int]:
        room = model.config.context - 1  # a prompt of one token leaves the rest to generate
        return {"max_prompt_chars": room, "max_new_tokens": room}


@torch.no_grad()
def _last_logits(model: Gpt, ids: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(ids)[None])[0, -1].numpy()


def _card_tokens(context: int) -> int:
    """The card sample's length: what the context leaves after the prompt, as served."""
    return min(text_training.CARD_TOKENS, context - len(text_training.CARD_PROMPT))


def load_checkpoint(path: Path) -> Gpt:
    """Rebuild the GPT from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, Gpt, GptConfig)


EXPORTER = GptExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
