"""The one registry of tiny case files the tests build on."""

from __future__ import annotations

import textwrap
from pathlib import Path

EVAL_BN2D = """\
description: a tiny eval-mode BatchNorm2d
model: batchnorm2d
bn:
  num_features: 2
  running_mean: [0.5, -0.5]
  running_var: [2.0, 0.5]
mode: eval
input:
  shape: [2, 2, 3, 3]
  seed: 1
steps:
  - forward
  - export
  - forward
"""

TRAIN_EXPORT_BN2D = """\
description: a train-mode BatchNorm2d exported as a training graph, stepped on after the export
model: batchnorm2d
bn:
  num_features: 2
  running_mean: [0.5, -0.5]
  running_var: [2.0, 0.5]
mode: train
input:
  shape: [4, 2, 3, 3]
  seed: 1
steps:
  - forward
  - export: {training: training, opset: 15}
  - forward
  - forward
"""

FORUM_FLIP = """\
description: the forum thread, smallest form
model: forum_net
bn:
  num_features: 2
  running_mean: [0.5, -0.25]
  running_var: [2.0, 0.5]
mode: {"": train, bn: eval}
input:
  shape: [2, 3, 4, 4]
steps:
  - forward
  - export
  - forward
"""

FORUM_FLIP_EXPECT = """\
expect:
  - field: module.bn.training
    step: [1, 2]
    runners: [onnx-torchscript-ort]
    reason: the TorchScript exporter restores modes with a recursive model.train()
  - fields: [module.bn.num_batches_tracked, module.bn.running_*, module.output]
    step: 2
    runners: [onnx-torchscript-ort]
    reason: bn is back in train mode
"""


def write_case(directory: Path, name: str, text: str) -> Path:
    """Write `text` (dedented) as `directory/name.yaml` and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    return path


GRAPH_NODE = """\
description: a hand-built training BatchNormalization node
onnx_graph: {opset: 15, training_mode: true, num_features: 2, epsilon: 1.0e-5, momentum: 0.9, mean: [0.5, -0.5], var: [2.0, 0.5]}
input: {shape: [4, 2, 3], seed: 1}
steps: [forward, {train_step: {repeat: 2}}]
"""
