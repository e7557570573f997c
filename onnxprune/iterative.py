"""The iterative loop of the Vitis AI workflow on the ONNX model alone: prune a little, recover
(reconstruct the layers on calibration data and/or distil toward the original), and repeat with a
growing ratio until the target.  Each step ranks and allocates on the current pruned model (its
own weights, recovered by the steps before), so a channel that mattered little at step 1 but
carries what its pruned neighbours lost is kept at step 2.

The targets come from onnxprune.schedule: after step k of K the model keeps
1 - schedule(k, K, 1 - target_macs) of the original's MACs (linear by default: equal cuts).
Reconstruction fits each step's model to the model of the step before (onnxprune.recovery
works on one prune at a time); distillation always targets the original, and with `features`
matches the original's intermediate tensors through the kept channels composed over all steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx
from tqdm import tqdm

from typing import TYPE_CHECKING

from . import schedule as schedules
from .errors import InputError
from .finetune import FinetuneOptions, compose, finetune, kept_channels
from .plan import resolve

if TYPE_CHECKING:
    from .api import PrunableModel


@dataclass
class IterativeOptions:
    """How the loop prunes and recovers."""

    target_macs: float
    """Fraction of the original's MACs to keep at the end, in (0, 1)."""
    steps: int = 4
    schedule: str = "linear"
    """A name in onnxprune.schedule.STEP_SCHEDULES: the removed fraction after step k of `steps`."""
    criterion: str | None = None
    """As `PrunableModel.plan` (None: activation with data)."""
    reconstruct: bool = True
    distill: FinetuneOptions | None = None
    """Distil toward the original after each step's prune (needs torch); None: no distillation."""
    features: list[str] = field(default_factory=list)
    """Intermediate tensors to distil as well (names present in the original and the pruned model)."""
    allocation: dict = field(default_factory=dict)
    """Further options of `PrunableModel.plan` (round_to, max_ratio, ignore, protect_ends, global_ranking)."""

    def validate(self) -> None:
        if not 0 < self.target_macs < 1:
            raise InputError("options: --target-macs must be in (0, 1)")
        if self.steps < 1:
            raise InputError("options: --steps must be at least 1")
        if self.schedule not in schedules.STEP_SCHEDULES:
            raise InputError(f"options: unknown --schedule '{self.schedule}' (choose from {', '.join(schedules.STEP_SCHEDULES)})")
        if self.features and self.distill is None:
            raise InputError("options: --features needs distillation (--distill-epochs N)")


@dataclass
class StepReport:
    """One step of the loop, measured against the original on all of the calibration data."""

    step: int
    target_macs: float
    """Fraction of the original's MACs this step aimed at."""
    macs: float
    """Fraction of the original's MACs the model has after this step."""
    rel_error: float
    top1_agreement: float | None
    accuracy: float | None
    """With labels (classifiers): accuracy on the calibration data."""
    seconds: float


@dataclass
class IterativeResult:
    model: onnx.ModelProto
    steps: list[StepReport]
    kept: dict[str, dict[int, np.ndarray]]
    """For every activation tensor the loop narrowed, the original's elements it keeps, by axis
    (finetune.kept_channels composed over the steps)."""


def step_targets(target_macs: float, steps: int, schedule: str = "linear") -> list[float]:
    """Fraction of the original's MACs to keep after each of `steps` steps; the last is the target."""
    cut = schedules.STEP_SCHEDULES[schedule]
    return [1.0 - cut(k, steps, 1.0 - target_macs) for k in range(1, steps + 1)]


def iterate(model: "PrunableModel", feeds: dict[str, np.ndarray], options: IterativeOptions,
            labels: np.ndarray | None = None, progress: bool = False) -> IterativeResult:
    """Prune `model` to `options.target_macs` of its MACs in `options.steps` steps, recovering
    after each on `feeds` (calibration inputs, no labels needed; `labels` only add accuracy to
    the report)."""
    from .api import PrunableModel
    from .quality import measure

    options.validate()
    shapes = model.cost_shapes  # every step counts MACs at the original's sizes
    base = model.cost_model.base.macs
    original = model.model
    current, kept, reports = model, {}, []
    bar = tqdm(step_targets(options.target_macs, options.steps, options.schedule), desc="iterate", unit="step",
               disable=not progress, leave=False)
    for k, target in enumerate(bar, 1):
        start = time.perf_counter()
        have = current.cost_model.base.macs / base
        plan = current.plan(options.criterion, feeds, target_macs=min(target / have, 1.0), **options.allocation)
        result = current.apply(plan, feeds, reconstruct=options.reconstruct)
        kept = compose(kept, kept_channels(current.depgraph, resolve(plan, current.depgraph)))
        pruned = result.model
        if options.distill is not None:
            distill = FinetuneOptions(**{**vars(options.distill), "features": {n: kept.get(n, {}) for n in options.features}})
            pruned = finetune(pruned, original, feeds, distill).model
        fidelity = measure(original, pruned, feeds, labels)
        current = PrunableModel(pruned, input_shapes=shapes)
        reports.append(StepReport(k, target, current.cost_model.base.macs / base, fidelity.rel_error,
                                  fidelity.top1_agreement, fidelity.accuracy_after, time.perf_counter() - start))
    bar.close()
    return IterativeResult(current.model, reports, kept)

