"""The model table: what follows from each entry, and that the torch builder and the Keras port
read the table and nothing else (a model added as one entry is built and ported)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from harness.core.models import MODEL_SPECS
from tests.test_schema import problems
from tests.tiny_cases import EVAL_BN2D


def test_paths_and_shrink_follow_from_the_layers():
    nested = MODEL_SPECS["nested_two_bn"]
    assert nested.submodule_paths == ("", "stem", "stem.conv", "stem.bn", "head", "head.block", "head.block.conv", "head.block.bn")
    assert nested.batchnorm_paths == ("stem.bn", "head.block.bn") and nested.spatial_shrink == 0
    assert MODEL_SPECS["forum_net"].submodule_paths == ("", "conv1", "bn", "fc1") and MODEL_SPECS["forum_net"].spatial_shrink == 2
    assert MODEL_SPECS["batchnorm2d"].batchnorm_paths == ("",) and MODEL_SPECS["batchnorm2d"].is_bare_batchnorm


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_the_torch_builder_makes_the_modules_the_table_lists(name):
    from harness.run.runners.torch_models import build_layer

    spec = MODEL_SPECS[name]
    shape = [2, 3] + [5] * (spec.input_ranks[-1] - 2)
    config = type("Config", (), {"num_features": 3, "eps": 1e-5, "momentum": 0.1, "affine": True, "track_running_stats": True})()
    for value in ("weight", "bias", "running_mean", "running_var"):
        setattr(config, value, None)
    model = build_layer(dict(spec.root), shape, config)
    assert tuple(path for path, _ in model.named_modules()) == spec.submodule_paths


def test_an_input_the_convolutions_shrink_to_nothing_is_refused(tmp_path):
    text = EVAL_BN2D.replace("model: batchnorm2d", "model: conv_bn").replace("shape: [2, 2, 3, 3]", "shape: [2, 2, 2, 3]")
    assert problems(tmp_path, text) == [
        "cases/case.yaml:9: input.shape: the model's convolutions shrink each spatial size by 2; allowed: spatial sizes >= 3"
    ]


# A model that exists nowhere but in this entry: BN after a ReLU, then a Linear head.
NEW_MODEL = """
import json, os, sys
from pathlib import Path
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np
from harness.core import models
models.MODEL_SPECS["conv_relu_bn_head"] = models.ModelSpec(
    "conv_relu_bn_head", "a model added as one table entry", {"kind": "block", "name": None, "layers": [
        {"kind": "conv2d", "name": "features", "kernel": 3, "padding": 1, "bias": True}, {"kind": "relu"},
        {"kind": "batchnorm", "name": "norm"}, {"kind": "flatten"},
        {"kind": "linear", "name": "head", "out_features": 4, "bias": True}]}, (4,))
from harness.load.schema import load_case
case = load_case(Path(sys.argv[1]))
import keras, torch
from harness.core.inputs import make_batch
from harness.core.keras_mapping import keras_mapping
from harness.run.runners.keras_worker import make_port
from harness.run.runners.torch_models import build_model, to_numpy
model = build_model(case)
port = make_port(keras, case, keras_mapping(case), {name: to_numpy(t) for name, t in model.state_dict().items()})
batch = make_batch(case.input, 3)
with torch.no_grad():
    expected = to_numpy(model(torch.from_numpy(batch).float()))
actual = port(batch)
print(json.dumps({"shape": list(actual.shape), "gap": float(np.max(np.abs(expected - actual))), "layers": sorted(port.layers)}))
"""


@pytest.mark.slow  # imports keras in a subprocess
def test_a_model_added_as_one_table_entry_is_built_in_torch_and_ported_to_keras(tmp_path):
    case = tmp_path / "case.yaml"
    case.write_text(
        textwrap.dedent(EVAL_BN2D)
        .replace("model: batchnorm2d", "model: conv_relu_bn_head")
        .replace("shape: [2, 2, 3, 3]", "shape: [4, 3, 5, 5]")
    )
    run = subprocess.run([sys.executable, "-c", NEW_MODEL, str(case)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["shape"] == [4, 4] and found["layers"] == ["features", "head", "norm"]
    assert found["gap"] < 1e-5, "float32 on both sides, same weights, same data"
