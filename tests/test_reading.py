"""Reading ΔR²: OLS R² by least squares, the baseline models and the 100·(R²−R²₀)/(1−R²₀) scaling."""
from __future__ import annotations

import numpy as np
import pytest

from cdray.eval import reading


def test_r_squared_of_one_predictor_is_squared_correlation():
    x = np.array([1.0, 2.0, 3.0, 5.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 5.0, 6.0])
    assert reading.r_squared(y, [x]) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)


def _columns(n=60, seed=0):
    rng = np.random.default_rng(seed)
    cols = {c: rng.normal(size=n) for c in ("Subtlex_log10", "length", "context_length", "prev_length",
                                             "prev_pred", "pred")}
    return rng, cols


def test_delta_r2_by_hand():
    rng, cols = _columns()
    noise = rng.normal(size=60)
    base = 2 * cols["Subtlex_log10"] - cols["length"] + 0.5 * cols["length"] * cols["context_length"]
    # the residual of y on the baseline design is exactly `pred` (made orthogonal to it): R² = 1
    X = np.column_stack([np.ones(60), *reading._design(cols, reading.EYE_BASE)])
    pred = noise - X @ np.linalg.lstsq(X, noise, rcond=None)[0]
    cols["pred"] = pred
    cols["RTfirstfix"] = base + pred
    r0 = reading.r_squared(cols["RTfirstfix"], reading._design(cols, reading.EYE_BASE))
    assert r0 < 1
    assert reading.delta_r2(cols, "RTfirstfix", reading.EYE_BASE) == pytest.approx(100.0)
    # a predictor of pure noise adds (almost) nothing; rows missing the predictor are dropped
    cols["pred"] = rng.normal(size=60)
    cols["pred"][:5] = np.nan
    v = reading.delta_r2(cols, "RTfirstfix", reading.EYE_BASE)
    sub = {k: c[5:] for k, c in cols.items()}
    r0 = reading.r_squared(cols["RTfirstfix"], reading._design(cols, reading.EYE_BASE))  # all rows
    r1 = reading.r_squared(sub["RTfirstfix"], reading._design(sub, reading.EYE_BASE) + [sub["pred"]])
    assert v == pytest.approx(100 * (r1 - r0) / (1 - r0))


def test_reading_scores_average_the_four_eye_tracking_measures():
    rng, cols = _columns(80, 1)
    for dv in (*reading.EYE_TRACKING, reading.SELF_PACED):
        cols[dv] = cols["Subtlex_log10"] + rng.normal(size=80) + rng.uniform() * cols["pred"]
    s = reading.reading_scores(cols)
    eye = [s[f"eye_tracking.{dv}"] for dv in reading.EYE_TRACKING]
    assert s["eye_tracking"] == pytest.approx(np.mean(eye))
    assert len(reading._design(cols, reading.SPR_BASE)) == 5 + 10  # main effects + pairwise terms
    assert s["reading"] == pytest.approx(reading.delta_r2(cols, reading.SELF_PACED, reading.SPR_BASE))
