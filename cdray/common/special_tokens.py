"""The special tokens every cdray vocabulary starts with, and their ids: one source for the
tokenizer's trainer, the token streams, the prompts and the decoder."""
from __future__ import annotations

SPECIALS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0, 1, 2, 3, in this order
UNK, BOS, EOS, PAD = SPECIALS
UNK_ID, BOS_ID, EOS_ID, PAD_ID = range(len(SPECIALS))
