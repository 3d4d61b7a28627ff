"""Tests of cdray.models.step_clock: the first step is timed apart, rates and data-wait share."""
import time

import pytest

from cdray.models.step_clock import StepClock


def test_step_clock_keeps_the_first_step_apart():
    clock = StepClock(tokens_per_step=100)
    for _ in range(3):
        clock.start()
        time.sleep(0.002)
        clock.data_ready()
        time.sleep(0.006)
        clock.stop()
    s = clock.summary()
    assert s["timed_steps"] == 2 and s["first_step_s"] >= 0.008
    assert s["tokens_per_s"] == pytest.approx(200 / s["step_seconds"])
    assert 0 < s["data_wait_share"] < 1 and s["data_wait_share"] * s["step_seconds"] >= 0.004
    assert StepClock(10).summary()["tokens_per_s"] is None  # nothing timed: no rate
