from __future__ import annotations

import numpy as np

from harness.core.case import InputSpec
from harness.core.inputs import make_batch


def test_batches_are_seeded_and_reproducible():
    spec = InputSpec((4, 3, 2, 2), "float32")
    assert np.array_equal(make_batch(spec, 7), make_batch(spec, 7))
    assert not np.array_equal(make_batch(spec, 7), make_batch(spec, 8))


def test_per_channel_offset_scale_and_constant_channels():
    spec = InputSpec(
        (512, 3, 4, 4), "float32", channel_offset=(10.0, -5.0, 0.0), channel_scale=(1.0, 0.01, 1.0), constant_channels=((2, 3.5),)
    )
    batch = make_batch(spec, 0)
    means = batch.mean(axis=(0, 2, 3))
    assert abs(means[0] - 10.0) < 0.1 and abs(means[1] + 5.0) < 0.01
    assert batch[:, 1].std() < 0.02
    assert np.all(batch[:, 2] == 3.5)


def test_literal_values_keep_their_layout():
    spec = InputSpec((2, 2), "float64", values=(1.0, 2.0, 3.0, 4.0))
    assert make_batch(spec, 99).tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_a_step_draws_from_its_own_input_else_from_the_cases(tmp_path):
    from harness.core.inputs import step_batch
    from harness.load.schema import load_case
    from tests.tiny_cases import EVAL_BN2D

    path = tmp_path / "own.yaml"
    path.write_text(EVAL_BN2D.split("steps:")[0] + "steps:\n  - forward\n  - forward: {input: {shape: [5, 2, 3, 3], mean: 4.0}}\n")
    case = load_case(path)
    plain, own = (step_batch(case.input, step) for step in case.steps)
    assert np.array_equal(plain, make_batch(case.input, case.input.seed))
    assert own.shape == (5, 2, 3, 3) and abs(float(own.mean()) - 4.0) < 0.5
    assert case.steps[1].label() == "forward(input shape=5x2x3x3, mean=4)"
