"""Character-level LSTM language model on Shakespeare's plays.

Trains ``lstm_model.CharLstm`` on windows of the training plays, measures
the validation loss in nats per character (the state carried across the
whole held-out text, as the service carries it), exports ``lstm.onnx``
(tokens, h, c) -> (logits, h, c), checks it against PyTorch for prompts and
single steps and that greedy decoding through it matches PyTorch token for
token, and writes ``<out>/<name>/<version>/``::

    python -m genserve.exporters.lstm --out models --name lstm-shakespeare \\
        --version 1 --epochs 2 --seed 0 --threads 1
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from genserve.exporters import onnx_export, pipeline, text_training, training
from genserve.exporters.lstm_model import CharLstm, LstmConfig, LstmGraph
from genserve.exporters.quality_report import Evaluation
from genserve.runtime.schema import GraphSpec

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.lstm"
GRAPH = "lstm"
VALIDATION_STREAMS = 16
"""The validation text is read as this many contiguous streams side by side."""
GREEDY_TOKENS = 64
"""Tokens the export check decodes greedily through ONNX Runtime and PyTorch."""


@torch.no_grad()
def validation_nats(model: CharLstm, tokens: torch.Tensor) -> float:
    """Mean next-character loss over the validation text, state carried throughout."""
    model.eval()
    length = (len(tokens) - 1) // VALIDATION_STREAMS
    x = tokens[: length * VALIDATION_STREAMS].reshape(VALIDATION_STREAMS, length)
    y = tokens[1 : length * VALIDATION_STREAMS + 1].reshape(VALIDATION_STREAMS, length)
    state, total = None, 0.0
    for start in range(0, length, model.config.context):
        end = min(start + model.config.context, length)
        logits, state = model(x[:, start:end], state)
        total += F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[:, start:end].reshape(-1), reduction="sum"
        ).item()
    return round(total / x.numel(), 4)


def export_graph(model: CharLstm, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
    """Write ``lstm.onnx`` and check it: prompts, single steps, and greedy decoding."""
    config, graph = model.config, LstmGraph(model).eval()
    path = folder / f"{GRAPH}.onnx"

    def make_inputs(batch: int, rng: np.random.Generator, length: int = 5) -> dict:
        state = (batch, config.layers, config.hidden)
        return {
            "tokens": rng.integers(0, config.vocab_size, (batch, length), dtype=np.int64),
            "h": rng.standard_normal(state).astype(np.float32) * 0.5,
            "c": rng.standard_normal(state).astype(np.float32) * 0.5,
        }

    example = tuple(torch.from_numpy(a) for a in make_inputs(2, np.random.default_rng(0)).values())
    with warnings.catch_warnings():  # torch's notes on the LSTM's flat weights and the batch Dim
        warnings.filterwarnings("ignore", r".*_flat_weights.*", UserWarning)
        warnings.filterwarnings("ignore", r".*The axis name: batch will not be used", UserWarning)
        onnx_model = onnx_export.export_onnx(
            graph, example, path, input_names=["tokens", "h", "c"],
            output_names=["logits", "h_out", "c_out"], axes={"tokens": {1: "length"}},
        )  # fmt: skip
    diffs = {
        "prompt_max_abs_diff": onnx_export.check_parity(graph, path, make_inputs),
        "step_max_abs_diff": onnx_export.check_parity(
            graph, path, lambda b, rng: make_inputs(b, rng, length=1)
        ),
    }
    mismatch = greedy_mismatch(model, path)
    if mismatch is not None:
        raise onnx_export.ParityError(f"greedy decoding differs from PyTorch at token {mismatch}")
    spec = {GRAPH: onnx_export.graph_spec(onnx_model, path)}
    batch_sizes = list(onnx_export.PARITY_BATCH_SIZES)
    parity = {"batch_sizes": batch_sizes, "max_abs_diff": max(diffs.values()), **diffs}
    return spec, {**parity, "greedy_tokens_match": GREEDY_TOKENS}


@torch.no_grad()
def greedy_mismatch(model: CharLstm, path: Path) -> int | None:
    """The first token where greedy decoding through the graph (prompt, then one token a
    call, state carried) differs from PyTorch on the whole text; None if none does."""
    session = onnx_export.cpu_session(path)
    config = model.config
    ids = [1, 2, 3]
    zeros = np.zeros((1, config.layers, config.hidden), np.float32)
    logits, h, c = session.run(None, {"tokens": np.array([ids]), "h": zeros, "c": zeros})
    for i in range(GREEDY_TOKENS):
        want = int(model(torch.tensor([ids]))[0][0, -1].argmax())
        if int(logits[0].argmax()) != want:
            return i
        ids.append(want)
        logits, h, c = session.run(None, {"tokens": np.array([[want]]), "h": h, "c": c})
    return None


class LstmExporter(text_training.TextExporter):
    """The char-LSTM's hooks: next-character loss, one graph for prompt and steps."""

    family = "lstm"
    prog = PROG
    default_name = "lstm-shakespeare"
    evaluation = Evaluation(
        sampling="the card's sample: temperature 0.8, seed 0", max_validation_nats=1.70
    )
    parser_options = {"epochs": 2, "batch_size": 64, "learning_rate": 2e-3}
    model_class = CharLstm
    config_flags = ("hidden", "layers", "context")

    def default_configs(self) -> tuple[LstmConfig, training.TrainConfig]:
        return LstmConfig(), training.TrainConfig(epochs=2, batch_size=64, learning_rate=2e-3)

    def fit(self, model: CharLstm, run: pipeline.Run) -> pipeline.Trained:
        vocab = model.vocabulary
        train = text_training.tokens_of(run.train, vocab)
        result = text_training.train_next_char(model, train, run.train_config, run.seed)
        nats = validation_nats(
            model, text_training.tokens_of(text_training.validation_text(run), vocab)
        )
        metrics = {
            "final_train_nats_per_char": round(result.last_epoch_loss, 4),
            "validation_nats_per_char": nats,
            "validation_bits_per_char": round(nats / math.log(2), 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "sample": text_training.card_sample(
                text_training.sample_text(lambda ids: _last_logits(model, ids), vocab)
            ),
        }
        return pipeline.Trained(result, metrics)

    def export(self, model: CharLstm, folder: Path) -> tuple[dict[str, GraphSpec], dict]:
        return export_graph(model, folder)

    def description(self, model: CharLstm, run: pipeline.Run) -> str:
        config, count = model.config, sum(p.numel() for p in model.parameters())
        return (
            f"Character-level LSTM ({config.layers} layers of {config.hidden}, {count:,} "
            f"parameters, {config.vocab_size} characters) trained on {run.dataset_name} in "
            f"windows of {config.context} characters; lstm.onnx runs a prompt from a zero "
            "state and then one character a call, the state carried between calls."
        )


@torch.no_grad()
def _last_logits(model: CharLstm, ids: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(ids)[None])[0][0, -1].numpy()


def load_checkpoint(path: Path) -> CharLstm:
    """Rebuild the LSTM from :func:`training.save_checkpoint`'s file."""
    return training.load_checkpoint(path, CharLstm, LstmConfig)


EXPORTER = LstmExporter()
train_and_export, main = EXPORTER.train_and_export, EXPORTER.main

if __name__ == "__main__":
    main()
