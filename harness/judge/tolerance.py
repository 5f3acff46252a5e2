"""The tolerance a comparison uses: the per-dtype defaults (harness.core.tolerances) or a case's override."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.core.case import ToleranceOverride
from harness.core.tolerances import DEFAULT_TOLERANCES

NAN_POLICY = "NaN equals NaN at the same index; infinities equal only with the same sign"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """The (rtol, atol) a comparison used, for which dtype, and where the numbers come from."""

    dtype: str
    rtol: float
    atol: float
    source: str
    magnitude_rtol: float = 0.0  # also allowed: this share of the reference's greatest finite |value|

    def describe(self) -> str:
        """`float32 rtol=1.3e-06 atol=1e-05 (torch.testing default)`."""
        magnitude = f" magnitude_rtol={self.magnitude_rtol:g}" if self.magnitude_rtol else ""
        return f"{self.dtype} rtol={self.rtol:g} atol={self.atol:g}{magnitude} ({self.source})"

    def atol_for(self, reference: Any) -> float:
        """The atol a comparison with this reference array allows: atol, plus magnitude_rtol times the
        reference's greatest finite |value| (a difference relative to the tensor's magnitude: conv+BN
        folding rounds at 3e5 where an element-wise rtol fails the elements near zero)."""
        if not self.magnitude_rtol:
            return self.atol
        return self.atol + self.magnitude_rtol * greatest_finite(reference)


def greatest_finite(values: Any) -> float:
    """The greatest finite |value| of an array (0 when it has none): a tensor's magnitude."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size else 0.0


def tolerance_for(dtypes: Iterable[str], override: ToleranceOverride | None = None) -> Tolerance:
    """The loosest tolerance among `dtypes` (mixed dtypes take the loosest); a case override wins."""
    names = sorted(set(dtypes))
    overrides = {dtype: (rtol, atol) for dtype, rtol, atol in override.by_dtype} if override else {}
    chosen = max(names, key=lambda name: overrides.get(name, DEFAULT_TOLERANCES[name]))
    label = chosen if len(names) == 1 else f"{'/'.join(names)} -> {chosen}"
    if chosen in overrides:
        rtol, atol = overrides[chosen]
        magnitude = dict(override.magnitude_rtol).get(chosen, 0.0) if override else 0.0
        return Tolerance(label, rtol, atol, f"case override: {override.reason if override else ''}", magnitude)
    rtol, atol = DEFAULT_TOLERANCES[chosen]
    return Tolerance(label, rtol, atol, "torch.testing default")
