"""Wall-clock time per pipeline stage, for `onnxprune prune --timings` and the benchmarks.

Stages nest (the dependency graph is built on first use, inside importance): a stage's time is
its own, exclusive of the stages that ran inside it, so the figures add up to the total.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterator


class Stage(str, Enum):
    """The pipeline stages, in the order they run."""

    LOAD = "load"
    DEPGRAPH = "depgraph"
    IMPORTANCE = "importance"
    ALLOCATION = "allocation"
    SURGERY = "surgery"
    VERIFICATION = "verification"
    SAVE = "save"


@dataclass
class Timings:
    seconds: dict[Stage, float] = field(default_factory=dict)
    _open: list[list] = field(default_factory=list, repr=False)

    @contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        now = time.perf_counter()
        if self._open:  # pause the enclosing stage
            outer = self._open[-1]
            self.seconds[outer[0]] = self.seconds.get(outer[0], 0.0) + now - outer[1]
        self._open.append([stage, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            _, start = self._open.pop()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - start
            if self._open:
                self._open[-1][1] = now  # resume the enclosing stage

    def add(self, other: "Timings") -> None:
        for stage, seconds in other.seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.seconds.values())

    def format(self) -> str:
        """One line per stage that ran, in pipeline order, then the total."""
        rows = [f"{stage.value:<13} {self.seconds[stage]:8.3f} s" for stage in Stage if stage in self.seconds]
        return "\n".join(rows + [f"{'total':<13} {self.total:8.3f} s"])
