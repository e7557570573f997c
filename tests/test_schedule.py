"""Pruning schedules match their published formulas."""

from __future__ import annotations

import math

import pytest

from onnxprune.schedule import cubic, linear, paddle_log


def test_linear_goes_from_initial_to_final_in_equal_steps():
    assert [linear(s, 4, 0.8) for s in range(6)] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert linear(2, 4, 0.8, initial=0.4) == pytest.approx(0.6)


def test_paddle_log_matches_the_dynamic_pruning_hook():
    upper, interval, end = 0.75, 3, 60
    weight = upper / math.log(end / interval + 2)
    for pass_id in (0, 3, 4, 30, 59, 60, 90):
        applied = min(pass_id, end) - min(pass_id, end) % interval
        assert paddle_log(pass_id, upper, interval, end) == pytest.approx(weight * math.log(2 + applied / interval))
    assert paddle_log(60, upper, interval, end) == pytest.approx(upper)
    # aggressive first, gentle later: the first interval adds more than the last one
    assert paddle_log(3, upper, interval, end) - paddle_log(0, upper, interval, end) > \
        paddle_log(60, upper, interval, end) - paddle_log(57, upper, interval, end)


def test_cubic_matches_zhu_and_gupta():
    s_i, s_f, t0, n, dt = 0.1, 0.9, 5, 10, 2
    for t in (0, 5, 6, 7, 15, 25, 40):
        if t < t0:
            expected = s_i
        else:
            steps = min(t - t0, n * dt)
            steps -= steps % dt
            expected = s_f + (s_i - s_f) * (1 - steps / (n * dt)) ** 3
        assert cubic(t, s_f, s_i, start=t0, n=n, frequency=dt) == pytest.approx(expected)
    assert cubic(100, s_f, s_i, start=t0, n=n, frequency=dt) == pytest.approx(s_f)
