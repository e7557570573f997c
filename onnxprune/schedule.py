"""Pruning schedules: how much to prune at each step of a prune-finetune loop (channel pruning) or
each epoch of gradual magnitude pruning (sparsity).  All return the ratio/sparsity to reach at
`step`; they are pure functions, so a user's own training loop can call them."""

from __future__ import annotations

import math


def linear(step: int, steps: int, final: float, initial: float = 0.0) -> float:
    """From `initial` at step 0 to `final` at step `steps`, in equal increments."""
    if steps <= 0:
        return final
    t = min(max(step, 0), steps) / steps
    return initial + (final - initial) * t


def paddle_log(pass_id: int, sparsity_upper_bound: float, interval_pass: int = 3, end_pass: int = 60) -> float:
    """PaddlePaddle's dynamic pruning schedule (ParameterUpdaterHook 'dynamic_pruning'): prune every
    `interval_pass` passes up to `end_pass`, aggressively at first, along
    upper / log(end/interval + 2) * log(2 + pass/interval).  Between updates the last value holds."""
    last = min(pass_id, end_pass)
    last -= last % interval_pass
    weight = sparsity_upper_bound / math.log(end_pass / interval_pass + 2)
    return min(sparsity_upper_bound, weight * math.log(2 + last / interval_pass))


def cubic(step: int, final: float, initial: float = 0.0, start: int = 0, n: int = 10, frequency: int = 1) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, updated every
    `frequency` (dt) steps from `start` (t0) for `n` updates."""
    if step < start:
        return initial
    t = min(step - start, n * frequency)
    t -= t % frequency
    return final + (initial - final) * (1 - t / (n * frequency)) ** 3


def geometric(step: int, steps: int, final: float) -> float:
    """The removed fraction after `step` of `steps` when each step removes the same fraction of
    what is left: 1 - (1 - final)^(step/steps).  Steps then cut the current model alike, where
    `linear` makes the last steps the hardest (the same absolute cut of a smaller model)."""
    if steps <= 0:
        return final
    t = min(max(step, 0), steps) / steps
    return 1.0 - (1.0 - final) ** t


SCHEDULES = {"linear": linear, "paddle_log": paddle_log, "cubic": cubic}
STEP_SCHEDULES = {"linear": linear, "geometric": geometric}
"""Schedules of the iterative loop (onnxprune.iterative): (step, steps, final) -> removed fraction."""
