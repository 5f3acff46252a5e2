from __future__ import annotations

import dataclasses

import pytest

from harness.core.case import KerasOptions
from harness.core.keras_mapping import Unmappable, keras_mapping
from harness.load.schema import load_case
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, write_case


@pytest.fixture
def bn2d(tmp_path):
    return load_case(write_case(tmp_path, "case", EVAL_BN2D))


def with_keras(case, **options):
    return dataclasses.replace(case, keras=KerasOptions(**options))


def test_mapped_parameters_translate_pytorch_meaning(bn2d):
    mapping = keras_mapping(with_keras(bn2d, running_var="unbiased"))
    assert mapping.value("momentum") == pytest.approx(0.9) and mapping.value("epsilon") == 1e-5
    assert mapping.value("axis") == 1, "bare BatchNorms keep the NC... layout"
    assert mapping.summary() == (
        "Keras parameters all mapped from PyTorch: momentum=0.9, epsilon=1e-05, axis=1, trainable=True, center=True, "
        "scale=True, training_argument='explicit', running_var='unbiased'"
    )


def test_convolutional_models_are_fed_channels_last(tmp_path):
    assert keras_mapping(load_case(write_case(tmp_path, "case", FORUM_FLIP))).value("axis") == -1


def test_overrides_and_defaults_are_named_as_deviations(bn2d):
    mapping = keras_mapping(with_keras(bn2d, momentum=0.1, running_var="unbiased"))
    assert mapping.summary() == "Keras parameters not mapped from PyTorch: momentum=0.1 (case override; mapped: 0.9)"
    defaults = keras_mapping(with_keras(bn2d, parameters="framework-defaults", running_var="unbiased"))
    assert [(p.name, p.value, p.source) for p in defaults.parameters if p.deviates] == [
        ("momentum", 0.99, "Keras default"),
        ("epsilon", 1e-3, "Keras default"),
        ("axis", -1, "Keras default"),
    ]
    as_stored = keras_mapping(bn2d)
    assert "running_var='as_stored' (moving_variance as Keras stores it (biased); mapped: 'unbiased')" in as_stored.summary()


def test_pytorch_features_without_a_keras_counterpart(bn2d):
    with pytest.raises(Unmappable, match="momentum=None"):
        keras_mapping(dataclasses.replace(bn2d, bn=dataclasses.replace(bn2d.bn, momentum=None)))
    with pytest.raises(Unmappable, match="track_running_stats=False"):
        keras_mapping(dataclasses.replace(bn2d, bn=dataclasses.replace(bn2d.bn, track_running_stats=False)))
    defaults = dataclasses.replace(with_keras(bn2d, parameters="framework-defaults"), bn=dataclasses.replace(bn2d.bn, momentum=None))
    assert keras_mapping(defaults).value("momentum") == 0.99, "a hand port with Keras defaults still runs"


def test_keras_axis_is_checked_against_the_input_rank(tmp_path):
    from harness.core.errors import CaseError

    with pytest.raises(CaseError, match=r"keras.axis: axis 4 is outside an input of rank 4; allowed: -4..3"):
        load_case(write_case(tmp_path, "case", EVAL_BN2D + "keras: {axis: 4}\n"))
