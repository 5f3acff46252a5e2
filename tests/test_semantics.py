"""The spec oracles against values computed by hand.

One channel, the batch [1, 2, 3, 4]: mean 2.5, biased variance 1.25, unbiased 5/3.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from harness.core.results import BNCall
from harness.core.semantics import SPECS, oracle

X = np.array([[1.0], [2.0], [3.0], [4.0]])  # (N=4, C=1)
BASE = BNCall(
    semantics="pytorch",
    input=X,
    channel_axis=1,
    uses_batch_stats=True,
    updates_running_stats=True,
    eps=0.0,
    momentum=0.1,
    weight=None,
    bias=None,
    running_mean_before=np.array([0.0]),
    running_var_before=np.array([1.0]),
    num_batches_tracked_before=0,
)


def call(**changes) -> BNCall:
    return dataclasses.replace(BASE, **changes)


def test_pytorch_train_normalises_biased_and_stores_unbiased_with_momentum_on_the_new_batch():
    result = oracle(call())
    np.testing.assert_allclose(result.output[:, 0], (X[:, 0] - 2.5) / np.sqrt(1.25))
    assert result.running_mean[0] == pytest.approx(0.9 * 0.0 + 0.1 * 2.5)
    assert result.running_var[0] == pytest.approx(0.9 * 1.0 + 0.1 * 5 / 3)


def test_pytorch_cumulative_average_when_momentum_is_none():
    result = oracle(call(momentum=None, num_batches_tracked_before=1, running_mean_before=np.array([1.0])))
    assert result.running_mean[0] == pytest.approx((1.0 + 2.5) / 2), "the second batch weighs 1/2"


def test_pytorch_eval_uses_running_statistics_and_eps():
    result = oracle(
        call(
            uses_batch_stats=False,
            updates_running_stats=False,
            eps=1.0,
            running_mean_before=np.array([2.0]),
            running_var_before=np.array([3.0]),
        )
    )
    np.testing.assert_allclose(result.output[:, 0], (X[:, 0] - 2.0) / 2.0)
    assert result.running_var[0] == 3.0


def test_pytorch_without_running_stats_uses_the_batch_in_eval():
    result = oracle(call(updates_running_stats=False, running_mean_before=None, running_var_before=None))
    np.testing.assert_allclose(result.output[:, 0], (X[:, 0] - 2.5) / np.sqrt(1.25))
    assert result.running_mean is None


def test_onnx_training_uses_population_variance_and_momentum_on_the_old_value():
    result = oracle(call(semantics="onnx", momentum=0.9))
    assert result.running_mean[0] == pytest.approx(0.0 * 0.9 + 2.5 * 0.1)
    assert result.running_var[0] == pytest.approx(1.0 * 0.9 + 1.25 * 0.1)


def test_keras_biased_moving_variance_or_read_back_unbiased_and_eval_on_the_stored_one():
    assert oracle(call(semantics="keras", momentum=0.9)).running_var[0] == pytest.approx(0.9 + 0.1 * 1.25)
    unbiased = oracle(call(semantics="keras", momentum=0.9, running_var_reported="unbiased"))
    assert unbiased.running_var[0] == pytest.approx(0.9 + 0.1 * 5 / 3)
    inference = oracle(
        call(
            semantics="keras",
            momentum=0.9,
            uses_batch_stats=False,
            updates_running_stats=False,
            eps=0.0,
            running_mean_before=np.array([2.5]),
            running_var_before=np.array([9.0]),
            stored_var_before=np.array([4.0]),
        )
    )
    np.testing.assert_allclose(inference.output[:, 0], (X[:, 0] - 2.5) / 2.0), "normalises with what Keras stores"


def test_affine_and_channel_axis():
    two_channels = np.stack([X[:, 0], 10 * X[:, 0]], axis=1)  # channel 1 has mean 25, variance 125
    result = oracle(
        call(
            input=two_channels,
            weight=np.array([2.0, 1.0]),
            bias=np.array([0.0, 5.0]),
            running_mean_before=np.zeros(2),
            running_var_before=np.ones(2),
        )
    )
    np.testing.assert_allclose(result.output[:, 1], (two_channels[:, 1] - 25) / np.sqrt(125) + 5)
    np.testing.assert_allclose(result.output[:, 0], 2 * (X[:, 0] - 2.5) / np.sqrt(1.25))


def test_every_spec_cites_a_page_and_its_sentences():
    for spec in SPECS.values():
        assert spec.citation.startswith("https://") and spec.sentences


def test_a_fit_step_in_mini_batches_updates_once_per_mini_batch_in_order():
    # Model.fit with batch_size 2 on [1, 2, 3, 4]: [1, 2] (mean 1.5, var 0.25) then [3, 4] (3.5, 0.25).
    result = oracle(call(semantics="keras", momentum=0.9, mini_batch=2))
    assert result.running_mean[0] == pytest.approx(0.9 * (0.9 * 0.0 + 0.1 * 1.5) + 0.1 * 3.5)
    assert result.running_var[0] == pytest.approx(0.9 * (0.9 * 1.0 + 0.1 * 0.25) + 0.1 * 0.25)
    # Each mini-batch normalised with its own statistics: -1, 1, -1, 1.
    np.testing.assert_allclose(result.output[:, 0], [-1.0, 1.0, -1.0, 1.0], rtol=1e-12)


def test_a_last_smaller_mini_batch_is_its_own_update_and_a_mini_batch_of_the_whole_input_is_one():
    three = oracle(call(semantics="keras", momentum=0.9, mini_batch=3, eps=1e-3))  # [1, 2, 3] then [4]
    assert three.running_mean[0] == pytest.approx(0.9 * (0.1 * 2.0) + 0.1 * 4.0)
    assert three.running_var[0] == pytest.approx(0.9 * (0.9 + 0.1 * 2.0 / 3.0) + 0.1 * 0.0)
    whole = oracle(call(semantics="keras", momentum=0.9, mini_batch=4))
    plain = oracle(call(semantics="keras", momentum=0.9))
    np.testing.assert_array_equal(whole.running_mean, plain.running_mean)
    np.testing.assert_array_equal(whole.output, plain.output)


def test_mini_batches_leave_inference_alone():
    inference = oracle(call(semantics="keras", momentum=0.9, mini_batch=2, uses_batch_stats=False, updates_running_stats=False))
    np.testing.assert_allclose(inference.output[:, 0], X[:, 0], rtol=1e-12)  # mean 0, var 1, eps 0
    assert inference.running_mean[0] == 0.0
