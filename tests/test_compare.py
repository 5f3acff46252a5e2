from __future__ import annotations

import numpy as np

from harness.core.case import ToleranceOverride
from harness.core.results import Observed
from harness.judge.compare import compare_observed


def verdict(reference, other, *, field="bn.running_var", dtypes=("float32", "float32"), tolerance=None):
    from harness.core.case import BNConfig, Case, InputSpec, ModeSetting, Step

    case = Case(
        "c",
        "c.yaml",
        "",
        "batchnorm2d",
        BNConfig(3),
        ModeSetting((("", True),)),
        InputSpec((2, 3, 1, 1), "float32"),
        (Step("forward", seed=0),) * 3,
        tolerance=tolerance,
    )

    def wrap(value, dtype):
        return Observed(np.asarray(value, dtype=np.float64), dtype) if isinstance(value, list) else Observed(value)

    return compare_observed(
        field=field,
        step=2,
        step_label="step 2 (forward)",
        reference_name="torch-eager",
        other_name="onnx-torchscript-ort",
        reference=wrap(reference, dtypes[0]),
        other=wrap(other, dtypes[1]),
        case=case,
    )


def test_mismatch_text_has_one_fixed_shape():
    found = verdict([1.8, 1.9, 1.7], [1.624, 1.9, 1.54])
    assert not found
    assert found.text == (
        "bn.running_var after step 2 (forward): torch-eager vs onnx-torchscript-ort are not close!\n"
        "Mismatched elements: 2 / 3 (66.7%)\n"
        "Greatest absolute difference: 0.176 at index (0,) (up to 1e-05 allowed)\n"
        "Greatest relative difference: 0.0978 at index (0,) (up to 1.3e-06 allowed)\n"
        "Tolerance: float32 rtol=1.3e-06 atol=1e-05 (torch.testing default); "
        "NaN equals NaN at the same index; infinities equal only with the same sign\n"
        "  (0,): 1.8 (torch-eager), 1.624 (onnx-torchscript-ort)\n"
        "  (2,): 1.7 (torch-eager), 1.54 (onnx-torchscript-ort)"
    )
    assert (found.mismatched, found.total) == (2, 3)
    assert found.max_abs_index == (0,) and found.max_rel_index == (0,)


def test_maxima_are_over_mismatches_only_and_rows_stop_at_five():
    reference = [10.0] * 8 + [1000.0]
    other = [11.0] * 8 + [1000.001]  # the last one is close in relative terms despite the larger gap
    found = verdict(reference, other, dtypes=("float64", "float64"), tolerance=ToleranceOverride("test", (("float64", 1e-5, 0.0),)))
    assert found.mismatched == 8
    assert found.max_abs_diff == 1.0
    assert len([line for line in found.text.splitlines() if line.startswith("  (")]) == 5


def test_close_verdict_prints_its_tolerance():
    found = verdict([1.0, 2.0], [1.0, 2.0 + 1e-6])
    assert found
    assert found.text == (
        "bn.running_var after step 2 (forward): torch-eager vs onnx-torchscript-ort are close "
        "(greatest absolute difference 1e-06; float32 rtol=1.3e-06 atol=1e-05 (torch.testing default))"
    )


def test_minimum_tolerances_that_would_pass():
    found = verdict([1.0, 2.0], [1.5, 2.0])
    assert np.isclose(found.min_atol_to_pass, 0.5 - 1.3e-6)
    assert np.isclose(found.min_rtol_to_pass, 0.5 - 1e-5)
    assert verdict([1.0 + found.min_atol_to_pass + 1.3e-6 - 0.5], [1.0]), "a tolerance that large passes"


def test_nan_and_inf_policy():
    assert verdict([np.nan, np.inf, -np.inf], [np.nan, np.inf, -np.inf])
    for other in ([1.0, np.inf, -np.inf], [np.nan, -np.inf, -np.inf], [np.nan, np.inf, 0.0]):
        found = verdict([np.nan, np.inf, -np.inf], other)
        assert not found and found.mismatched == 1 and found.min_atol_to_pass is None


def test_mixed_dtypes_take_the_loosest_tolerance():
    found = verdict([1.0], [1.0005], dtypes=("float32", "float16"))
    assert found and (found.dtype, found.rtol, found.atol) == ("float16/float32 -> float16", 1e-3, 1e-5)


def test_a_case_override_is_used_and_named():
    override = ToleranceOverride("ORT accumulates in a different order", (("float32", 1e-3, 1e-3),))
    found = verdict([1.0], [1.001], tolerance=override)
    assert found and found.tolerance_source == "case override: ORT accumulates in a different order"
    assert not verdict([1.0], [1.001])


def test_shapes_and_scalars():
    found = verdict([1.0, 2.0], [1.0, 2.0, 3.0])
    assert not found and "have different shapes: (2,) (torch-eager), (3,) (onnx-torchscript-ort)" in found.text
    found = verdict(False, True, field="module.bn.training")
    assert not found and found.text == (
        "module.bn.training after step 2 (forward): torch-eager vs onnx-torchscript-ort differ: "
        "False (torch-eager), True (onnx-torchscript-ort)"
    )
    assert verdict(None, None, field="module.bn.momentum")
    assert not verdict(1, True, field="module.bn.num_batches_tracked"), "a flag is not a count"


def test_every_verdict_counts_the_nan_and_infinite_elements_of_each_side():
    """A divergence of 128 NaNs and one of 512 read alike by their greatest difference (NaN)."""
    reference = [[0.0] * 4] * 2
    other = [[np.nan, np.nan, np.nan, 0.0], [np.inf, 0.0, 0.0, 0.0]]
    diverging = verdict(reference, other)
    assert (diverging.nan_count, diverging.inf_count) == ((0, 3), (0, 1))
    assert (
        "Non-finite elements: NaN 0 (torch-eager), 3 (onnx-torchscript-ort); Inf 0 (torch-eager), 1 (onnx-torchscript-ort)"
        in diverging.text
    )
    agreeing = verdict([np.nan] * 3, [np.nan] * 3)
    assert agreeing.close and agreeing.nan_count == (3, 3) and agreeing.text.endswith("; NaN at the same 3 indices on both sides)")
    assert verdict(reference, reference).text.endswith("(torch.testing default))"), "no count said where there is none"


def test_a_magnitude_relative_tolerance_allows_rounding_at_the_tensors_scale():
    """Outputs of 3e5 (conv+BN folding) round by about 0.03 in float32: an element-wise rtol fails the
    elements near zero and an absolute atol fails the large ones; magnitude_rtol scales with the
    reference's greatest |value|."""
    reference = [3.0e5, -2.5e5, 1.0e-3, 0.0]
    other = [3.0e5 + 0.03, -2.5e5 - 0.02, 1.0e-3 + 0.02, 0.01]
    assert not verdict(reference, other), "the default tolerance fails near zero"
    relative = ToleranceOverride("folding rounds at the output's scale", (("float32", 1.3e-6, 1e-5),), (("float32", 1e-6),))
    found = verdict(reference, other, tolerance=relative)
    assert found.close and found.atol == 1e-5 + 1e-6 * 3.0e5
    assert "magnitude_rtol=1e-06 (case override: folding rounds at the output's scale), at this magnitude" in found.text
    tighter = verdict(reference, other, tolerance=ToleranceOverride("too tight", (("float32", 1.3e-6, 1e-5),), (("float32", 1e-8),)))
    assert not tighter and "(up to 0.00301 allowed)" in tighter.text
