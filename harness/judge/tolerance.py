"""The one per-dtype (rtol, atol) table, and the tolerance a comparison uses."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from harness.core.case import ToleranceOverride

# torch.testing.assert_close's defaults; a value passes when |a - b| <= atol + rtol * |reference|.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}
NAN_POLICY = "NaN equals NaN at the same index; infinities equal only with the same sign"


@dataclass(frozen=True, slots=True)
class Tolerance:
    """The (rtol, atol) a comparison used, for which dtype, and where the numbers come from."""

    dtype: str
    rtol: float
    atol: float
    source: str

    def describe(self) -> str:
        """`float32 rtol=1.3e-06 atol=1e-05 (torch.testing default)`."""
        return f"{self.dtype} rtol={self.rtol:g} atol={self.atol:g} ({self.source})"


def tolerance_for(dtypes: Iterable[str], override: ToleranceOverride | None = None) -> Tolerance:
    """The loosest tolerance among `dtypes` (mixed dtypes take the loosest); a case override wins."""
    names = sorted(set(dtypes))
    overrides = {dtype: (rtol, atol) for dtype, rtol, atol in override.by_dtype} if override else {}
    chosen = max(names, key=lambda name: overrides.get(name, DEFAULT_TOLERANCES[name]))
    label = chosen if len(names) == 1 else f"{'/'.join(names)} -> {chosen}"
    if chosen in overrides:
        rtol, atol = overrides[chosen]
        return Tolerance(label, rtol, atol, f"case override: {override.reason if override else ''}")
    rtol, atol = DEFAULT_TOLERANCES[chosen]
    return Tolerance(label, rtol, atol, "torch.testing default")
