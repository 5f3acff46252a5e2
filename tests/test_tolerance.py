from __future__ import annotations

from harness.core.case import ToleranceOverride
from harness.core.tolerances import DEFAULT_TOLERANCES
from harness.judge.tolerance import tolerance_for


def test_defaults_are_torch_testing_values():
    assert DEFAULT_TOLERANCES == {
        "float16": (1e-3, 1e-5),
        "bfloat16": (1.6e-2, 1e-5),
        "float32": (1.3e-6, 1e-5),
        "float64": (1e-7, 1e-7),
    }
    assert tolerance_for(["float64"]).describe() == "float64 rtol=1e-07 atol=1e-07 (torch.testing default)"


def test_loosest_of_mixed_dtypes_and_override_only_for_its_dtype():
    assert tolerance_for(["float16", "bfloat16"]).rtol == 1.6e-2
    override = ToleranceOverride("why", (("float32", 0.1, 0.2),))
    assert (tolerance_for(["float32"], override).rtol, tolerance_for(["float32"], override).atol) == (0.1, 0.2)
    assert tolerance_for(["float64"], override).source == "torch.testing default"
