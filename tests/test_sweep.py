"""The agreement sweep (the false-positive check): random configurations where the frameworks
should agree once mapped. A failure is a harness bug or a real divergence for a new case.

Run more with `pytest tests/test_sweep.py --sweep-count 100 --sweep-seed 7`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.core.runner_table import REFERENCE_RUNNER, runner_names
from harness.frontends.session import run_case
from harness.load.loader import LoadedDocument
from harness.load.schema import case_from_document
from harness.load.sweep import FAMILIES, keras_fit_draw, sweep_case

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # worker pools or pytest sessions in subprocesses


@pytest.mark.parametrize("family", FAMILIES)
def test_random_configurations_agree_once_mapped(family, sweep_index, request):
    case = sweep_case(family, sweep_index, request.config.getoption("sweep_seed"))
    result = run_case(case)
    statuses = {run.runner: run.status for run in result.runs}
    assert set(statuses.values()) <= {"ok", "skipped"}, statuses
    assert result.outcome == "passed", f"{case.model} {case.bn} {case.input.shape}\n{result.explain()}"


USER_MODELS = Path(__file__).resolve().parents[1] / "cases" / "20_user_models"


def user_sweep_case(group: str, index: int, seed: int = 0):
    """A random case on one of the bundled user models (a ResNet-style net, a MobileNet-style
    block, a detection-style backbone with a frozen BatchNorm), in the agreement regime of
    `group`'s runners, as the sweep's families are: onnx exports an eval model in eval; keras
    trains (the whole model, or with every BatchNorm frozen) and reads the variance back in
    PyTorch's convention, with no eval forward after training; compile trains, then evaluates."""
    rng = np.random.default_rng([seed, 100 + ("onnx", "keras", "compile").index(group), index])
    width = int(rng.integers(2, 6))
    factory, kwargs, channels = [
        ("TinyResNet", {"width": width}, 3),
        ("MobileNetBlock", {"channels": width, "out_channels": int(rng.integers(2, 7))}, width),
        ("build_backbone", {"width": width, "stages": int(rng.integers(1, 3))}, 3),
    ][int(rng.integers(0, 3))]
    size = int(rng.integers(6, 9))
    data: dict[str, Any] = {
        "description": f"agreement sweep on a user model ({group})",
        "model": {"file": "models.py", "factory": factory, "kwargs": kwargs},
        "model_seed": int(rng.integers(0, 1000)),
        "input": {"shape": [int(rng.integers(2, 5)), channels, size, size], "seed": int(rng.integers(0, 1000))},
        "runners": [REFERENCE_RUNNER, *runner_names(group)],
    }
    train = bool(rng.random() < 0.7)
    if group == "onnx":
        data.update(mode="eval", steps=["forward", {"export": {"training": "eval", "opset": int(rng.choice([15, 17, 18]))}}, "forward"])
    elif group == "keras":
        steps: list[Any] = ["forward", {"train_step": {"repeat": int(rng.integers(1, 3))}}] if train else ["forward", "forward"]
        data.update(keras={"running_var": "unbiased"}, steps=steps)
        if train and rng.random() < 0.4:
            data["freeze_batchnorm"] = True
        else:
            data["mode"] = "train" if train else "eval"
        keras_fit_draw(rng, data)  # the last draw: the cases drawn before it stay as they were
    else:
        steps = ["forward", {"train_step": {"repeat": 1}}, {"set_mode": "eval"}, "forward"] if train else ["forward", "forward"]
        data.update(mode="train" if train else "eval", steps=steps)
    case_id = f"sweep-user-{group}-{index}"
    return case_from_document(LoadedDocument(data, {}), case_id=case_id, source=f"<{case_id}>", directory=USER_MODELS)


@pytest.mark.parametrize("group", ["onnx", "keras", "compile"])
def test_random_user_model_configurations_agree_once_mapped(group, sweep_index, request):
    case = user_sweep_case(group, sweep_index, request.config.getoption("sweep_seed"))
    result = run_case(case)
    statuses = {run.runner: (run.status, run.reason) for run in result.runs}
    assert {status for status, _ in statuses.values()} <= {"ok", "skipped"}, statuses
    assert result.outcome == "passed", f"{case.model} {case.user_model.kwargs} {case.input.shape} {case.mode}\n{result.explain()}"
