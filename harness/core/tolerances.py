"""The per-dtype (rtol, atol) a comparison allows by default: torch.testing.assert_close's."""

from __future__ import annotations

# A value passes when |a - b| <= atol + rtol * |reference|.
DEFAULT_TOLERANCES: dict[str, tuple[float, float]] = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
}
