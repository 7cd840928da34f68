"""Statistical disclosure control, applied as post-processing to differentially private output.

DP already bounds what any release reveals; SDC adds the safeguards data owners are used to (UK
practice: suppress cells below 10, round counts to 5, refuse cohorts that are too small). Because it
only looks at noisy values it costs no privacy budget. Each node declares its own policy; a result
drawn from several nodes gets the strictest of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field


class DisclosurePolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_cohort: int = Field(default=10, ge=0)
    suppress_below: int = Field(default=10, ge=0)
    round_to: int = Field(default=5, ge=1)

    def publish_count(self, count: int) -> int | None:
        """An exact count as it may be published: rounded to ``round_to``, or None (shown nowhere) when it
        is below ``suppress_below``."""
        if count < self.suppress_below:
            return None
        return int(round_count(count, self.round_to))

    @staticmethod
    def strictest(policies: Iterable[DisclosurePolicy]) -> DisclosurePolicy:
        found = list(policies) or [DisclosurePolicy()]
        return DisclosurePolicy(
            min_cohort=max(p.min_cohort for p in found),
            suppress_below=max(p.suppress_below for p in found),
            round_to=max(p.round_to for p in found),
        )


def round_count(value: float, base: int) -> float:
    return float(base * math.floor(value / base + 0.5))


def round_down(value: float, base: int) -> float:
    return float(base * math.floor(value / base))


def round_up(value: float, base: int) -> float:
    return float(base * math.ceil(value / base))
