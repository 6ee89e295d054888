"""What every benchmark reports its samples with."""

from __future__ import annotations

import math


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``samples``."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]
