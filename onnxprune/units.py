"""Counts as people read them (121.99k, 1.85M): shared by the command line and the HTML report.
No imports, so `onnxprune --help` stays light."""

from __future__ import annotations


def si(n: float) -> str:
    """`n` with a k/M/G suffix and two decimals, or as an integer below 1000."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
