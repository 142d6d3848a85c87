"""Honest statistics for a study's (or a campaign's) numbers: spread over seeds, paired differences with a
t interval, and the noise floor of a finite validation split (docs/studies.md, "Winners confirmed").

Accuracies are in points (percent), as every trial reports them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (n - 1) and count of a set of runs."""

    mean: float
    std: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.std:.2f} (n={self.n})"


def spread(values: Sequence[float]) -> Spread:
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("spread of no values")
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return Spread(mean, std, len(vals))


@dataclass(frozen=True)
class PairedDiff:
    """``a - b`` paired over seeds: mean, the two-sided ``level`` t interval, and the paired t-test's p value."""

    mean: float
    low: float
    high: float
    n: int
    level: float
    p_value: float
    test: str = "paired t-test"

    @property
    def within_noise(self) -> bool:
        """True when the interval holds 0: the data do not tell the two apart."""
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        pct = round(self.level * 100)
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] ({pct}% CI, n={self.n} pairs)"


def paired_diff(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDiff:
    """The paired difference ``a_i - b_i`` (same seed ``i``): mean ± t_{n-1, (1+level)/2} · s / sqrt(n)."""
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired values need equal counts, got {len(a)} and {len(b)}")
    d = [float(x) - float(y) for x, y in zip(a, b, strict=True)]
    s = spread(d)
    if s.n < 2:
        raise ValueError("a paired interval needs at least two pairs")
    half = float(stats.t.ppf((1 + level) / 2, s.n - 1)) * s.std / math.sqrt(s.n)
    if s.std == 0.0:
        p = 1.0 if s.mean == 0.0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(s.mean / (s.std / math.sqrt(s.n))), s.n - 1))
    return PairedDiff(s.mean, s.mean - half, s.mean + half, s.n, level, p)


def binomial_se(accuracy_pct: float, n: int) -> float:
    """One binomial standard error, in points, of an accuracy measured on ``n`` images: 100·sqrt(p(1-p)/n)."""
    if n <= 0:
        raise ValueError("binomial_se needs n > 0")
    p = min(max(float(accuracy_pct) / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(p * (1 - p) / n)


__all__ = ["PairedDiff", "Spread", "binomial_se", "paired_diff", "spread"]
