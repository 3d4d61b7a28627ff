"""The report's markdown pieces: the item-bootstrap table says so when there is nothing to resample."""
from __future__ import annotations

from cdray.eval.report import bootstrap_table
from cdray.eval.stats import PPL, Checkpoint, summarize


def test_a_perplexity_only_sweep_gets_a_sentence_not_an_empty_table():
    cps = [Checkpoint(arm, q, seed, 100, {PPL: p})
           for arm, q, p in (("BASELINE", 0.0, 90.0), ("NO-CONTRAST", 0.3, 85.0)) for seed in (42, 43)]
    text = bootstrap_table(summarize(cps, "best", B=100))
    assert "|" not in text and "perplexity has no items" in text
