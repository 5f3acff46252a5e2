"""The agreement sweep: random BatchNorm configurations in the regime where the frameworks should
agree once the parameters are mapped. Any divergence it finds is a harness bug to fix or a real
divergence to turn into a case with an expectation.

Every fourth configuration or so keeps a fresh module's statistics and affine parameters.

- onnx family: eval-mode models exported with training=eval, every ONNX runner (a train-mode
  export is known to change the model: see the export cases);
- keras family: train or eval, parameters mapped, moving variance read back in PyTorch's
  convention, no eval forward after training (Keras normalises with its biased variance then:
  see keras_running_var_stored_biased), and at least 8 values per channel (the one-pass variance
  of Keras's torch and numpy backends cancels on fewer: see keras_backends_moment_stress).
- compile family: torch.compile (inductor) against eager, train steps then an eval forward, or
  eval only; float32 and float64.

Some cases give steps their own batches: an export with a dynamic batch axis then fed another
batch size (onnx), train steps on a drifted distribution (keras, compile); some Keras ports of a
bare BatchNorm feed Keras channels-last data; some torch sides run in the channels_last memory
format (onnx, compile); some models configure a BatchNorm apart (bn_by_path), some cases set
statistics on the module first (set_state), some Keras ports are trained by Model.fit in one
mini-batch per step, and some onnx cases take inputs of large magnitude with magnitude_rtol.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.core.case import Case
from harness.core.models import MODEL_SPECS, ModelSpec, layer_output_shape
from harness.core.runner_table import REFERENCE_RUNNER, runner_names
from harness.core.tolerances import DEFAULT_TOLERANCES
from harness.load.loader import LoadedDocument
from harness.load.schema import case_from_document

# Each sweep family takes the reference and one group of the runner table.
FAMILY_RUNNERS = {
    family: [REFERENCE_RUNNER, *runner_names(group)] for family, group in (("onnx", "onnx"), ("keras", "keras"), ("compile", "compile"))
}
FAMILIES = ("onnx", "keras", "compile")


def sweep_case(family: str, index: int, seed: int = 0) -> Case:
    """The `index`-th random case of `family`, reproducible from (family, index, seed)."""
    rng = np.random.default_rng([seed, FAMILIES.index(family), index])
    data = _random_case(rng, family)
    case_id = f"sweep-{family}-{index}"
    return case_from_document(LoadedDocument(data, {}), case_id=case_id, source=f"<{case_id}>")


def _random_case(rng: np.random.Generator, family: str) -> dict[str, Any]:
    model = str(rng.choice(list(MODEL_SPECS)))
    spec = MODEL_SPECS[model]
    features = int(rng.integers(1, 7))
    batch = int(rng.integers(2, 9))
    ranks = spec.input_ranks
    rank = ranks[-1] if len(ranks) == 1 or rng.random() < 0.5 else ranks[0]
    channels = features if spec.keeps_channels else int(rng.integers(1, 5))
    smallest = max(2, spec.spatial_shrink + 1)  # what the convolutions leave at least 1 of
    shape = [batch, channels] + [int(rng.integers(smallest, smallest + 4)) for _ in range(rank - 2)]
    if family == "keras":
        # Keras's torch and numpy backends compute the batch variance in one pass, E[x^2] - E[x]^2
        # (keras-team/keras#18795; the case 11_precision/keras_backends_moment_stress shows it),
        # which cancels when a channel's variance is small against its squared mean: with three
        # values per channel at the BatchNorm it did, 1.4e-5 beyond float32's atol, and with eight
        # behind a Linear (whose bias offsets the BatchNorm's input) 4e-6 beyond. The family's
        # agreement regime holds at least 16 values per channel where the BatchNorm sees them.
        per_sample = _bn_values_per_channel(spec, shape, features)
        shape[0] = max(shape[0], -(-16 // per_sample))
    # float64 only where every runtime of the family has the kernels (onnxruntime has no double Conv).
    float64_ok = family == "compile" or (family == "onnx" and spec.is_bare_batchnorm)
    dtype = "float64" if float64_ok and rng.random() < 0.3 else "float32"
    affine = bool(rng.random() < 0.8)
    bn: dict[str, Any] = {
        "num_features": features,
        "eps": float(10 ** rng.uniform(-5, -1)),
        "momentum": float(rng.uniform(0.01, 0.5)),
        "affine": affine,
        "running_mean": [float(v) for v in rng.normal(0, 1, features)],
        "running_var": [float(v) for v in rng.uniform(0.5, 2.0, features)],
        "dtype": dtype,
    }
    if affine:
        bn["weight"] = [float(v) for v in rng.uniform(0.5, 1.5, features)]
        bn["bias"] = [float(v) for v in rng.normal(0, 0.5, features)]
    if rng.random() < 0.25:
        # A freshly built BatchNorm (running_var == weight, running_mean == bias), as most users
        # export it: the TorchScript exporter then shares initializers through Identity nodes.
        for name in ("weight", "bias", "running_mean", "running_var"):
            bn.pop(name, None)
    channels = shape[1]
    data: dict[str, Any] = {
        "description": f"agreement sweep ({family})",
        "model": model,
        "model_seed": int(rng.integers(0, 1000)),
        "bn": bn,
        "input": {
            "shape": shape,
            "seed": int(rng.integers(0, 1000)),
            "channel_offset": [float(v) for v in rng.uniform(-2, 2, channels)],
            "channel_scale": [float(v) for v in rng.uniform(0.5, 2, channels)],
        },
    }
    if family == "onnx":
        data.update(
            mode="eval",
            runners=FAMILY_RUNNERS["onnx"],
            steps=["forward", {"export": {"training": "eval", "opset": int(rng.choice([15, 17, 18]))}}, "forward"],
        )
    elif family == "keras":
        train = bool(rng.random() < 0.7)
        steps: list[Any] = ["forward", {"train_step": {"repeat": int(rng.integers(1, 3))}}] if train else ["forward", "forward"]
        data.update(mode="train" if train else "eval", runners=FAMILY_RUNNERS["keras"], keras={"running_var": "unbiased"}, steps=steps)
    else:  # compile: train steps, then eval (a recompilation on the guard on `training`)
        train = bool(rng.random() < 0.7)
        steps = (
            ["forward", {"train_step": {"repeat": int(rng.integers(1, 3))}}, {"set_mode": "eval"}, "forward"]
            if train
            else ["forward", "forward"]
        )
        data.update(mode="train" if train else "eval", runners=FAMILY_RUNNERS["compile"], steps=steps)
    _own_step_inputs(rng, family, data)  # drawn last: the draws above, and so the cases, stay as they were
    if family != "keras" and len(shape) in (4, 5) and rng.random() < 0.3:
        data["torch_memory_format"] = "channels_last"  # the torch side's other kernels
    _own_batchnorm_values(rng, data)
    if family == "keras":  # drawn after the rest: the earlier draws, and so the cases, stay as they were
        keras_fit_draw(rng, data)
    if family == "onnx" and rng.random() < 0.2:
        _large_magnitude(rng, data)
    return data


def _large_magnitude(rng: np.random.Generator, data: dict[str, Any]) -> None:
    """Inputs scaled to 1e3..1e5, judged with a magnitude-relative tolerance of one part in 1e6:
    the runtimes' convolutions and folding round at the outputs' scale, which that allows, while
    any real divergence is far larger (cases/12_conv_bn_folding/outputs_of_large_magnitude)."""
    scale = float(10 ** rng.uniform(3, 5))
    data["input"]["channel_scale"] = [value * scale for value in data["input"]["channel_scale"]]
    dtype = data["bn"]["dtype"]
    rtol, atol = DEFAULT_TOLERANCES[dtype]
    data["tolerance"] = {
        "reason": "inputs of large magnitude: rounding at the outputs' scale",
        dtype: {"rtol": rtol, "atol": atol, "magnitude_rtol": 1e-6},
    }


def keras_fit_draw(rng: np.random.Generator, data: dict[str, Any]) -> None:
    """Some Keras cases with train steps trained by Model.fit, in one mini-batch per step (the
    agreement regime: several would be several updates, cases/22_keras_model_fit)."""
    trains = any(isinstance(step, dict) and "train_step" in step for step in data["steps"])
    if trains and rng.random() < 0.35:
        batch_size = data["input"]["shape"][0] + int(rng.integers(0, 8))
        data["keras"].update(train_with="fit", fit_batch_size=batch_size)


def _own_batchnorm_values(rng: np.random.Generator, data: dict[str, Any]) -> None:
    """Some BatchNorms configured apart (bn_by_path), and statistics set on the module before
    anything runs (set_state), as users load them: each runner must build and follow them."""
    spec, features = MODEL_SPECS[data["model"]], data["bn"]["num_features"]
    paths = [path for path in spec.batchnorm_paths if path]
    if len(paths) > 1 and rng.random() < 0.5:
        own = {"eps": float(10 ** rng.uniform(-5, -2)), "momentum": float(rng.uniform(0.05, 0.5))}
        data["bn_by_path"] = {paths[-1]: own}
    if data["bn"].get("track_running_stats", True) and rng.random() < 0.3:
        target = paths[0] if paths else ""
        state = {
            "running_mean": [float(v) for v in rng.normal(0, 1, features)],
            "running_var": [float(v) for v in rng.uniform(0.5, 2.0, features)],
        }
        data["steps"] = [{"set_state": {target: state}}, *data["steps"]]


def _bn_values_per_channel(spec: ModelSpec, shape: list[int], features: int) -> int:
    """How many values per channel one sample gives the model's first BatchNorm."""
    layers = spec.root["layers"] if spec.root["kind"] == "block" else [spec.root]
    current = list(shape)
    for layer in layers:
        while layer["kind"] == "block" and layer["layers"]:  # into a block, to its first BatchNorm
            layer = layer["layers"][0]
        if layer["kind"] == "batchnorm":
            break
        current = layer_output_shape(layer, current, features)
    return max(1, int(np.prod(current[2:])))


def _own_step_inputs(rng: np.random.Generator, family: str, data: dict[str, Any]) -> None:
    """Steps with their own batches, in the agreement regime: an exported model fed another batch
    size (with a dynamic batch axis), or train steps on drifting data."""
    steps, shape = data["steps"], data["input"]["shape"]
    if family == "keras" and MODEL_SPECS[data["model"]].is_bare_batchnorm and rng.random() < 0.4:
        data["keras"]["layout"] = "channels_last"  # Keras's own layout: the same results, the channels moved
    if family == "onnx" and rng.random() < 0.2:
        steps[1]["export"]["keep_initializers_as_inputs"] = True  # a runtime may not fold what a caller could feed
    if family == "onnx" and rng.random() < 0.3:
        steps[1]["export"]["dynamic_batch"] = True
        steps[-1] = {"forward": {"input": {"shape": [shape[0] + int(rng.integers(1, 5)), *shape[1:]]}}}
    elif family != "onnx" and rng.random() < 0.4:
        for index, step in enumerate(steps):
            if isinstance(step, dict) and "train_step" in step:
                drift = [float(v) for v in rng.uniform(-3, 3, shape[1])]
                steps[index] = {"train_step": {**step["train_step"], "input": {"channel_offset": drift}}}
