"""Char-LSTM: a character-level language model, one token per step, its state in slots.

Every sample is one sequence of the model's step worker. A step runs
``lstm.onnx`` twice at most:

- each sample that joins runs its prompt alone, from a zero state (batch 1,
  T = its prompt's length); its last logits give its first token;
- every other sample feeds its last token (batch B, T = 1) with its h and c,
  read from the slot it holds; the new h and c go back into the slot.

The state never leaves its slot between steps (:class:`SlotTensor`), and a
row's result does not depend on the rows beside it (ONNX Runtime's LSTM on
the CPU computes every row alike), so a text is the same alone or batched.
Request checks, token drawing, stop sequences and streaming are the text
families' shared :class:`~genserve.runtime.textgen.TextModel`.
"""

from __future__ import annotations

import numpy as np

from genserve.runtime.model import LoadContext
from genserve.runtime.repository import ModelConfig
from genserve.runtime.scheduler import Sequence
from genserve.runtime.slots import SlotTensor
from genserve.runtime.textgen import TextModel, TextSample

GRAPH = "lstm"


class LstmModel(TextModel):
    """Character-level LSTM language model."""

    family = "lstm"
    network_keys = ("layers", "hidden")

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        super().__init__(config, context)
        state = (self.network["layers"], self.network["hidden"])
        self._graph = context.open_graph(config, GRAPH)
        self._h = SlotTensor(self.slots, state, np.float32)
        self._c = SlotTensor(self.slots, state, np.float32)
        self._zero = np.zeros((1, *state), np.float32)

    def step(self, batch: list[Sequence]) -> list[bool]:
        """Every running sample's next token; runs in the executor."""
        samples: list[TextSample] = [seq.state for seq in batch]
        logits = np.empty((len(samples), len(self.text.vocab)), np.float32)
        going = [i for i, s in enumerate(samples) if s.prefilled]
        for i, sample in enumerate(samples):
            if not sample.prefilled:  # its prompt, alone, from a zero state
                feeds = {"tokens": sample.prompt[None], "h": self._zero, "c": self._zero}
                logits[i : i + 1], h, c = self._run(feeds)
                self._h.write([batch[i].slot], h)
                self._c.write([batch[i].slot], c)
        if going:
            slots = [batch[i].slot for i in going]
            feeds = {
                "tokens": np.array([[samples[i].tokens[-1]] for i in going], np.int64),
                "h": self._h.read(slots),
                "c": self._c.read(slots),
            }
            logits[going], h, c = self._run(feeds)
            self._h.write(slots, h)
            self._c.write(slots, c)
        return self.text.advance(samples, logits)

    def _run(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self._graph.run(feeds)
        return out["logits"], out["h_out"], out["c_out"]
