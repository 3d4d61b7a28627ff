"""Reading surprisals as the official BabyLM 2025 pipeline computes them (eval.reading_mode: babylm2025).

For a word of one token this is −log p(word | <s> context), as cdray's exact mode. For a word of
several tokens the official causal code multiplies the probability of its first token after the
context by, for each later token, the probability of the *first token of that piece re-encoded as
a word start*, after the context joined to the decoded earlier pieces without a space. That is not
the word's log-probability (median 1.45 nats off on a demo checkpoint), but it is what produced
the paper's numbers, so this mode reproduces it call for call: the same tokenizer calls on the
saved tokenizer, one forward pass per call, the softmax in the model's dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

# cells pandas.read_csv reads as missing by default: the official pipeline reads the CSV with
# pandas, so a previous item spelled "None" has no previous-word surprisal there
PANDAS_NA = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                       "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


class OfficialReadingScorer:
    """−log p of a word given a context, by the official pipeline's `get_p2` (causal backend)."""

    def __init__(self, model, tokenizer, precision: str = "fp32"):
        self.model, self.tok, self.precision = model, tokenizer, precision
        self._cache: dict[tuple[str, str], float] = {}

    def _p(self, sentence: str, word: str) -> float:
        import torch

        from cdray.eval.device import autocast

        ids = self.tok(sentence, return_tensors="pt")["input_ids"].to(self.model.device)
        with torch.no_grad(), autocast(self.model.device, self.precision):
            logits = self.model(input_ids=ids).logits
        logits = logits[:, -1, :].float().cpu()  # bf16: the softmax still in fp32
        target = self.tok(word, add_special_tokens=False)["input_ids"][0]
        return torch.softmax(logits[0], dim=-1)[target].item()

    def surprisal(self, sentence: str, word: str) -> float:
        key = (sentence, word)
        if key not in self._cache:
            target = self.tok(word, add_special_tokens=False)["input_ids"]
            probs = [self._p(sentence, word)]
            if len(target) > 1:
                sentence = sentence + self.tok.decode(target[0])
                for token in target[1:]:
                    piece = self.tok.decode(token)
                    probs.append(self._p(sentence, piece))
                    sentence = sentence + piece
            self._cache[key] = -math.log(float(np.prod(probs)))
        return self._cache[key]


def reading_surprisals(model, tokenizer, docs: list[dict],
                       precision: str = "fp32") -> tuple[list[float], list[Optional[float]]]:
    """(surprisal of each row's word after its item, of its previous word after the previous
    item, or None where the row has no previous item): the official pipeline's `pred` and
    `prev_pred` columns, for a model in eval mode and the sweep's saved tokenizer."""
    scorer = OfficialReadingScorer(model, tokenizer, precision)
    words = [scorer.surprisal(d["item"], d["word"]) for d in docs]
    prev = [None if d["prev_item"] in PANDAS_NA else scorer.surprisal(d["prev_item"], d["prev_word"])
            for d in docs]
    return words, prev
