"""Whether a number shows its signal: a 95 % interval compared with chance, said in words beside the number."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Verdict", "above_chance", "wilson_interval", "fmt", "fmt_ci"]


@dataclass(frozen=True)
class Verdict:
    ok: bool
    words: str


def _finite(*values: float | None) -> bool:
    return all(v is not None and math.isfinite(v) for v in values)


def above_chance(value: float | None, low: float | None, high: float | None, chance: float) -> Verdict:
    """Shown when the interval's lower end is above ``chance``; otherwise the words say why not."""
    if not _finite(value, low, high):
        return Verdict(False, "no interval (too few cases of one class): signal not shown")
    if low > chance:
        return Verdict(True, f"signal shown: the 95 % CI lies above chance ({chance:.3f})")
    if value > chance:
        return Verdict(False, f"signal NOT shown: above chance ({chance:.3f}) but the 95 % CI includes it")
    return Verdict(False, f"signal NOT shown: at or below chance ({chance:.3f})")


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (recall@k over ``n`` queries)."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if not _finite(value) else f"{value:.{digits}f}"


def fmt_ci(value: float | None, low: float | None, high: float | None) -> str:
    """``0.812 [0.700, 0.901]``; ``n/a`` parts where a number is missing."""
    return f"{fmt(value)} [{fmt(low)}, {fmt(high)}]"
