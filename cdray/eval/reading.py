"""Reading scores: ΔR² of surprisal over the BabyLM baseline OLS models (eye tracking, self-paced)."""
from __future__ import annotations

import itertools
import math

import numpy as np

EYE_TRACKING = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
# baseline predictors: every main effect plus every pairwise interaction
EYE_BASE = ("Subtlex_log10", "length", "context_length")
SPR_BASE = ("Subtlex_log10", "length", "context_length", "prev_length", "prev_pred")


def r_squared(y: np.ndarray, columns: list[np.ndarray]) -> float:
    """R² of an OLS fit with intercept (numpy least squares)."""
    X = np.column_stack([np.ones(len(y)), *columns])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(resid @ resid) / sst if sst > 0 else math.nan


def _design(cols: dict[str, np.ndarray], names: tuple[str, ...]) -> list[np.ndarray]:
    main = [cols[n] for n in names]
    inter = [cols[a] * cols[b] for a, b in itertools.combinations(names, 2)]
    return main + inter


def delta_r2(cols: dict[str, np.ndarray], dv: str, base: tuple[str, ...]) -> float:
    """100·(R² − R²₀)/(1 − R²₀): what surprisal (`pred`) adds over the baseline model of dv.

    As in the BabyLM pipeline, each model drops the rows missing any of its own columns.
    """
    def fit(names, extra):
        used = (dv, *names, *extra)
        ok = np.all([np.isfinite(cols[c]) for c in used], axis=0)
        sub = {c: cols[c][ok] for c in used}
        if ok.sum() <= len(names) * (len(names) + 1) // 2 + len(extra) + 1:
            return math.nan
        return r_squared(sub[dv], _design(sub, names) + [sub[c] for c in extra])

    r0 = fit(base, ())
    r1 = fit(base, ("pred",))
    if not (math.isfinite(r0) and math.isfinite(r1)) or r0 >= 1.0:
        return math.nan
    return 100.0 * (r1 - r0) / (1.0 - r0)


def reading_scores(cols: dict[str, np.ndarray]) -> dict[str, float]:
    """{'reading': self-paced ΔR², 'eye_tracking': mean ΔR² over the four eye-tracking measures}."""
    eye = [delta_r2(cols, dv, EYE_BASE) for dv in EYE_TRACKING]
    return {"reading": delta_r2(cols, SELF_PACED, SPR_BASE), "eye_tracking": float(np.mean(eye)),
            **{f"eye_tracking.{dv}": v for dv, v in zip(EYE_TRACKING, eye)}}
