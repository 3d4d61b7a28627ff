"""The schedule benchmark's held stages (cdray.common.faults.hold_seconds): set lengths, asked per stage."""
from __future__ import annotations


def test_hold_seconds_sleeps_only_the_stage_it_is_asked_for(monkeypatch):
    import time

    from cdray.common.faults import HOLD_ENV, hold_seconds

    monkeypatch.setenv(HOLD_ENV, "train=0.3,evaluate=0")
    t0 = time.perf_counter()
    hold_seconds("generate")
    hold_seconds("evaluate")
    assert time.perf_counter() - t0 < 0.2
    hold_seconds("train")
    assert time.perf_counter() - t0 >= 0.3
