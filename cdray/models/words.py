"""Words seen by a training run, counted exactly from the blocks each step reads, and the steps at
which it has seen the amounts of words its word-count checkpoints ask for.

A word is a maximal run of non-whitespace characters (`len(text.split())`, as cdray counts a
corpus's words). It is counted in the block that holds its first token: a token starts a word
where one of its characters is not whitespace and the character before it (in the token, or at
the end of the token before it; a document starts after `<s>`) is. Real and synthetic sequences
count alike: every word the model reads is a word seen, and a word read again in a later epoch is
seen again.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from cdray.common.special_tokens import SPECIALS, UNK

# BabyLM's checkpoints (the 2025 call for papers, Charpentier et al., arXiv 2502.10645; the
# 2025/2026 evaluation pipeline reads them as revisions chck_1M ... chck_1000M): every 1M words to
# 10M, every 10M to 100M, every 100M to 1B words seen
BABYLM_WORDS = (tuple(m * 10**6 for m in range(1, 10)) + tuple(m * 10**6 for m in range(10, 100, 10))
                + tuple(m * 10**6 for m in range(100, 1001, 100)))
_CHUNK = 1 << 24  # tokens scanned at once (the per-token arrays stay ~100 MB)


def schedule(spec: Union[str, tuple[int, ...]]) -> tuple[int, ...]:
    """The word counts of train.checkpoint_words ("babylm" or the counts themselves)."""
    return BABYLM_WORDS if spec == "babylm" else tuple(int(w) for w in spec)


def folder_name(words: int) -> str:
    """A word-count checkpoint's folder, as the BabyLM pipeline names its revisions: chck_<millions>M."""
    return f"chck_{words / 10**6:g}M"


class WordStarts:
    """Per vocabulary entry: the words it starts after whitespace, after a non-space character,
    whether it ends in whitespace (special tokens are document boundaries) and whether it is empty:
    an id the tokenizer does not have (a model's vocabulary may be larger, and a sampler may draw
    those ids) decodes to nothing, so it neither starts a word nor separates two tokens."""

    def __init__(self, tokenizer_dir: str | Path):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
        n = tok.get_vocab_size(with_added_tokens=True)
        self.after_space = np.zeros(n, dtype=np.int64)
        self.after_word = np.zeros(n, dtype=np.int64)
        self.ends_space = np.ones(n, dtype=bool)
        self.empty = np.zeros(n, dtype=bool)
        for i in range(n):
            piece = tok.id_to_token(i)
            if piece is None:
                self.empty[i] = True
                continue
            if piece in SPECIALS and piece != UNK:
                continue
            text = "x" if piece == UNK else piece.replace("\u2581", " ")  # Metaspace's space
            inner = sum(1 for a, b in zip(text, text[1:]) if a.isspace() and not b.isspace())
            first = int(bool(text) and not text[0].isspace())
            self.after_space[i], self.after_word[i] = inner + first, inner
            self.ends_space[i] = bool(text) and text[-1].isspace()
            self.empty[i] = not text

    def _cover(self, top: int) -> None:
        """Tables for ids up to `top`: those past the tokenizer's are empty."""
        grow = top + 1 - len(self.empty)
        if grow > 0:
            self.after_space = np.concatenate([self.after_space, np.zeros(grow, dtype=np.int64)])
            self.after_word = np.concatenate([self.after_word, np.zeros(grow, dtype=np.int64)])
            self.ends_space = np.concatenate([self.ends_space, np.zeros(grow, dtype=bool)])
            self.empty = np.concatenate([self.empty, np.ones(grow, dtype=bool)])

    def per_block(self, tokens: np.ndarray, seq_len: int) -> np.ndarray:
        """Words starting in each seq_len block of a token stream (the blocks training reads)."""
        n_blocks = len(tokens) // seq_len
        out = np.zeros(n_blocks, dtype=np.int64)
        step = _CHUNK - _CHUNK % seq_len
        carry = True  # whether the text so far ends in whitespace (a stream starts a document)
        for lo in range(0, n_blocks * seq_len, step):
            chunk = np.asarray(tokens[lo:min(lo + step, n_blocks * seq_len)], dtype=np.int64)
            self._cover(int(chunk.max()))
            # whether the text before each token ends in whitespace: the end of the last non-empty
            # token before it, or what the chunks before left
            solid = np.where(~self.empty[chunk], np.arange(len(chunk)), -1)
            last = np.maximum.accumulate(solid)
            before_at = np.concatenate([[-1], last[:-1]])
            ends = self.ends_space[chunk]
            before = np.where(before_at >= 0, ends[np.maximum(before_at, 0)], carry)
            starts = np.where(before, self.after_space[chunk], self.after_word[chunk])
            out[lo // seq_len: lo // seq_len + len(chunk) // seq_len] = starts.reshape(-1, seq_len).sum(axis=1)
            carry = bool(ends[last[-1]]) if last[-1] >= 0 else carry
        return out


def words_by_step(data, tokenizer_dir: str | Path) -> np.ndarray:
    """Words seen after each step 0..steps of a run (cumulative; `data` its MixedBatches)."""
    counter = WordStarts(tokenizer_dir)
    steps = len(data.counts)
    real_n, syn_n = data.consumed(steps)
    seen = np.zeros(steps + 1, dtype=np.int64)
    at = np.arange(steps + 1)
    syn_at = data.cum_syn[at]
    for stream, used, taken in ((data.real, real_n, at * data.batch_size - syn_at), (data.syn, syn_n, syn_at)):
        if stream is None or used == 0:
            continue
        blocks = counter.per_block(stream.tokens, stream.seq_len)
        cum = np.concatenate([[0], np.cumsum(blocks[stream.block_ids(0, used)])])
        seen += cum[taken]
    return seen


def checkpoint_steps(targets: tuple[int, ...], seen: np.ndarray) -> dict[int, int]:
    """{words: the first step after which the run has seen at least that many}, for the targets
    the run reaches (seen: words_by_step)."""
    steps = np.searchsorted(seen, np.asarray(targets, dtype=np.int64), side="left")
    return {int(w): int(s) for w, s in zip(targets, steps) if 1 <= s < len(seen)}
