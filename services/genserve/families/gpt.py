"""GPT: a character-level transformer, one token per step, its keys and values cached in place.

Every sample is one sequence of the model's step worker. The cache is one
preallocated array per layer for keys and one for values, with a row per
running sample, each row the size of the whole context::

    cache[2 * layer + (0 keys | 1 values)]  (max_running, heads, context, head_dim) float32

A step runs ``gpt.onnx`` (see the exporter's ``gpt_model``), which takes
each of them as its own input (``past_key_0``, ``past_value_0``, ...):

1. a sample whose row is gone (it finished, or left) frees it: the last row
   moves into the hole, so the rows in use are always the first k, one
   row copy per departure, never per step;
2. each sample that joins runs its prompt alone with an empty past
   (batch 1, P = 0); its keys and values fill a new row at the end;
3. the other k samples feed their last token with ``cache[i][:k]`` as their
   past (views: nothing is gathered or concatenated, in the service or in
   the graph, which scores past and new keys as two blocks under one
   softmax) and their own ``past_length``; the graph returns only the new
   token's keys and values, written into each row at its position.

Every decode step hands the graph the whole context (P = context, later
positions masked out), so its shapes never depend on how long the other
samples are: a text is the same alone or batched, and the step's work
outside the session call does not grow with the context. Request checks,
token drawing, stop sequences and streaming are the text families' shared
:class:`~genserve.runtime.textgen.TextModel`.
"""

from __future__ import annotations

import numpy as np

from genserve.runtime.model import LoadContext
from genserve.runtime.repository import ModelConfig
from genserve.runtime.scheduler import Sequence
from genserve.runtime.textgen import TextModel, TextSample

GRAPH = "gpt"


class GptModel(TextModel):
    """Character-level GPT with a per-row key/value cache."""

    family = "gpt"
    network_keys = ("layers", "heads", "width", "context")

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        length = int(config.params.get("network", {}).get("context", 0))
        super().__init__(config, context, context_length=length)
        layers, heads, width, _ = self.network.values()
        self._graph = context.open_graph(config, GRAPH)
        shape = (self.slots, heads, length, width // heads)
        self._cache = {
            f"past_{kind}_{i}": np.zeros(shape, np.float32)
            for i in range(layers)
            for kind in ("key", "value")
        }  # the graph's inputs, in order: each layer's keys, then its values
        self._rows: list[TextSample] = []
        """The sample whose keys and values each cache row holds, in row order."""

    # -- steps (in the executor) ---------------------------------------------------------------

    def step(self, batch: list[Sequence]) -> list[bool]:
        """Every running sample's next token."""
        samples: list[TextSample] = [seq.state for seq in batch]
        self._free_rows(set(samples))
        logits = {}
        going = list(self._rows)  # rows 0..k-1, in row order
        for sample in samples:
            if not sample.prefilled:
                logits[sample] = self._prefill(sample)
        if going:
            for sample, row_logits in zip(going, self._decode(going), strict=True):
                logits[sample] = row_logits
        return self.text.advance(samples, np.stack([logits[s] for s in samples]))

    def _free_rows(self, running: set[TextSample]) -> None:
        """Drop the rows of samples no longer running; the last rows fill the holes."""
        row = 0
        while row < len(self._rows):
            if self._rows[row] in running:
                row += 1
                continue
            last = len(self._rows) - 1
            if row != last:
                for cache in self._cache.values():
                    cache[row] = cache[last]
                self._rows[row] = self._rows[last]
            self._rows.pop()

    def _prefill(self, sample: TextSample) -> np.ndarray:
        """Run a joining sample's prompt alone; its keys and values fill a new row."""
        row = len(self._rows)
        feeds = {
            "tokens": sample.prompt[None],
            "past_length": np.zeros(1, np.int64),
            **{name: cache[row : row + 1, :, :0] for name, cache in self._cache.items()},
        }
        out = self._graph.run(feeds)
        present = out["present"][0]  # (layers, 2, heads, T, head_dim)
        for i, cache in enumerate(self._cache.values()):
            cache[row, :, : len(sample.prompt)] = present[i // 2, i % 2]
        self._rows.append(sample)
        return out["logits"][0]

    def _decode(self, going: list[TextSample]) -> np.ndarray:
        """One token for each of the first k rows' samples; their new keys and values in place."""
        k = len(going)
        positions = np.array([s.length - 1 for s in going], np.int64)  # of each last token
        feeds = {
            "tokens": np.array([[s.tokens[-1]] for s in going], np.int64),
            "past_length": positions,
            **{name: cache[:k] for name, cache in self._cache.items()},
        }
        out = self._graph.run(feeds)
        present = out["present"][:, :, :, :, 0]  # (k, layers, 2, heads, head_dim)
        rows = np.arange(k)
        for i, cache in enumerate(self._cache.values()):
            cache[rows, :, positions] = present[:, i // 2, i % 2]
        return out["logits"]
