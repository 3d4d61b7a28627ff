"""A sweep whose BASELINE trains at several settings: each synthetic arm against the best BASELINE,
and each arm family at its own best setting, with seed-paired bootstrap intervals."""
from __future__ import annotations

import pytest

from cdray.eval.best_baseline import best_baseline, seed_differences, seed_paired, verdicts
from cdray.eval.stats import PPL, Checkpoint, summarize


def cps(arm: str, q: float, ppls: list[float]) -> list[Checkpoint]:
    return [Checkpoint(arm, q, seed, 100, {PPL: p}) for seed, p in zip((42, 43, 44), ppls)]


CHECKPOINTS = (cps("BASELINE weight_decay=0.1", 0.0, [100, 101, 102]) + cps("BASELINE weight_decay=1", 0.0, [90, 91, 92])
               + cps("CD-EARLY-157 weight_decay=0.1", 0.3, [95, 96, 97]) + cps("CD-EARLY-157 weight_decay=1", 0.3, [85, 86, 88])
               + cps("NO-CONTRAST weight_decay=0.1", 0.3, [91, 92, 90.5]))


def test_the_best_baseline_is_the_lowest_perplexity_and_needs_two_settings():
    rows = summarize(CHECKPOINTS, "best", B=0)
    assert best_baseline(rows) == "BASELINE weight_decay=1"
    assert best_baseline(summarize(cps("BASELINE", 0.0, [1, 2, 3]) + cps("CD", 0.3, [1, 2, 3]), B=0)) is None


def test_each_synthetic_arm_is_judged_against_the_best_baseline_and_at_its_own_best_setting():
    rows = summarize(CHECKPOINTS, "best", B=0)
    lines = verdicts(CHECKPOINTS, rows, B=500)
    text = "\n".join(lines)
    assert lines[0].startswith("#### Against the best BASELINE (BASELINE weight_decay=1")
    # better than its own BASELINE (wd 0.1), not than the best one
    assert "- CD-EARLY-157 weight_decay=0.1 q=0.3: does not beat it on perplexity" in text
    assert "- CD-EARLY-157 weight_decay=1 q=0.3: beats it on perplexity" in text
    # within a point of the best BASELINE on every seed: the interval holds 0
    assert "- NO-CONTRAST weight_decay=0.1 q=0.3: does not beat it" in text
    own_best = text.split("at its own best setting")[1]
    assert "CD-EARLY-157 weight_decay=1 q=0.3: beats it" in own_best and "NO-CONTRAST" not in own_best


def test_the_perplexity_interval_pairs_seeds():
    c = seed_paired(CHECKPOINTS, "CD-EARLY-157 weight_decay=1", 0.3, "BASELINE weight_decay=1", B=500)
    assert c.diff == pytest.approx((85 + 86 + 88) / 3 - 91) and c.ci[1] < 0 and c.significant
    assert seed_paired(CHECKPOINTS[:4], "BASELINE weight_decay=0.1", 0.0, "BASELINE weight_decay=1") is None


def test_each_seeds_difference_is_shown_beside_the_interval():
    text = "\n".join(verdicts(CHECKPOINTS, summarize(CHECKPOINTS, "best", B=0), B=200))
    assert seed_differences(CHECKPOINTS, "CD-EARLY-157 weight_decay=1", 0.3, "BASELINE weight_decay=1") == {
        42: -5.0, 43: -5.0, 44: -4.0}
    assert "by seed: 42 -5.00, 43 -5.00, 44 -4.00" in text and "interval is optimistic" in text
