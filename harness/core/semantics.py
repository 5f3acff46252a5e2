"""Float64 oracles of each documented BatchNorm semantics, with the sentences they rest on.

Each oracle takes what one BatchNorm was given at one step (`BNCall`: its input, its state before
the step, its parameters in its own framework's meaning) and returns what its documentation says
it computes: the output and the running statistics after the step. Pure NumPy, float64.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness.core.results import BNCall


@dataclass(frozen=True, slots=True)
class Spec:
    """A documented semantics: its name, where it is written, and the sentences relied on."""

    key: str
    name: str
    citation: str
    sentences: tuple[str, ...]
    running_var_convention: str  # how its running variance is updated, in a few words


PYTORCH = Spec(
    "pytorch",
    "PyTorch BatchNorm{1,2,3}d",
    "https://PyTorch.org/docs/stable/generated/torch.nn.BatchNorm2d.html",
    (
        "At train time in the forward pass, the standard-deviation is calculated via the biased "
        "estimator, equivalent to torch.var(input, unbiased=False).",
        "However, the value stored in the moving average of the standard-deviation is calculated "
        "via the unbiased estimator, equivalent to torch.var(input, unbiased=True).",
        "the update rule for running statistics here is x_new = (1 - momentum) * x + momentum * x_t",
        "momentum ... Can be set to None for cumulative moving average (i.e. simple average).",
        "If track_running_stats is set to False, this layer then does not keep running estimates, "
        "and batch statistics are instead used during evaluation time as well.",
    ),
    "unbiased batch variance, momentum weighting the new batch",
)
ONNX = Spec(
    "onnx",
    "ONNX BatchNormalization",
    "https://onnx.ai/onnx/operators/onnx__BatchNormalization.html",
    (
        "running_mean = input_mean * momentum + current_mean * (1 - momentum)",
        "running_var = input_var * momentum + current_var * (1 - momentum)",
        "Notice that ReduceVar refers to the population variance",
        "When training_mode=False: Y = (X - input_mean) / sqrt(input_var + epsilon) * scale + B",
        "(opset 9-13) the mode is given by the number of outputs: 5 in training, 1 in inference; float attributes are stored as float32",
        "(opset 6) is_test: If set to nonzero, run spatial batch normalization in test mode, default is 0",
        "(opset 6, 7) spatial: If false, compute the mean and variance across per feature over each "
        "mini-batch; the dimensions of scale are (C x D1 x ... x Dn)",
        "(opset 6-13) saved_mean, saved_var: Saved mean / Saved variance used during training to speed "
        "up gradient computation (the batch's mean and population variance, as onnx's reference "
        "implementation returns them)",
        "(opset 9-15) X: dimensions are in the form of (N x C x D1 x D2 ... Dn); scale, B, mean, var: tensor of shape (C)",
    ),
    "population variance, momentum weighting the old value",
)
KERAS = Spec(
    "keras",
    "Keras 3 BatchNormalization",
    "https://www.tensorflow.org/versions/r2.21/api_docs/python/tf/keras/layers/BatchNormalization",
    (
        "moving_mean = moving_mean * momentum + mean(batch) * (1 - momentum)",
        "moving_var = moving_var * momentum + var(batch) * (1 - momentum)",
        "training=False ... is the default",
        "setting trainable = False on the layer means that the layer will be subsequently run in "
        "inference mode (keras/src/layers/normalization/batch_normalization.py)",
        "var(batch) is keras.ops.moments' variance, the biased one",
        "(Model.fit) batch_size: Number of samples per gradient update. If unspecified, batch_size "
        "will default to 32 (keras/src/trainers/trainer.py): each mini-batch is a training call, one update",
    ),
    "biased batch variance, momentum weighting the old value",
)
MODEL_FLOAT64 = Spec(
    "model-float64",
    "the case's model computed in float64",
    "https://docs.pytorch.org/docs/stable/notes/numerical_accuracy.html",
    (
        "A model output that passes through layers no BatchNorm oracle models (conv, linear, relu) "
        "has the model itself as its spec: the same module, modes and state, computed in float64 on "
        "the same input; its rounding floor on this data is how far the reference's own evaluation "
        "in the case's dtype lands from it.",
    ),
    "the model's own",
)
SPECS = {spec.key: spec for spec in (PYTORCH, ONNX, KERAS, MODEL_FLOAT64)}


@dataclass(frozen=True, slots=True)
class OracleResult:
    """What the documented semantics computes for one BatchNorm call."""

    output: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    saved_mean: np.ndarray | None = None  # ONNX opset 6-13 training outputs: the batch's statistics
    saved_var: np.ndarray | None = None


def oracle(call: BNCall) -> OracleResult:
    """The output and running statistics that `call.semantics` documents for this call."""
    return {"pytorch": pytorch_batchnorm, "onnx": onnx_batchnorm, "keras": keras_batchnorm}[call.semantics](call)


def _batch_moments(x: np.ndarray, axis: int, per_activation: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and population variance per channel (per activation: over the batch axis only)."""
    axes = (0,) if per_activation else tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    count = int(np.prod([x.shape[i] for i in axes]))
    return x.mean(axis=axes), x.var(axis=axes), count


def _broadcast(values: np.ndarray, x: np.ndarray, axis: int) -> np.ndarray:
    """A per-channel vector, or a per-activation tensor (x.shape[1:]), shaped to broadcast over x."""
    values = np.asarray(values)
    if values.ndim > 1 or (values.size != x.shape[axis % x.ndim] and values.shape == x.shape[1:]):
        return values.reshape((1, *x.shape[1:]))
    shape = [1] * x.ndim
    shape[axis % x.ndim] = -1
    return values.reshape(shape)


def _normalise(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float, weight: np.ndarray | None, bias: np.ndarray | None, axis: int
) -> np.ndarray:
    y: np.ndarray = (x - _broadcast(mean, x, axis)) / np.sqrt(_broadcast(var, x, axis) + eps)
    if weight is not None:
        y = y * _broadcast(weight, x, axis)
    if bias is not None:
        y = y + _broadcast(bias, x, axis)
    return y


# A spec's own update rule: (call, batch mean, batch population variance, values per channel) ->
# (running mean, running variance) after the step.
Update = Callable[[BNCall, np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def _batchnorm(call: BNCall, update: Update) -> OracleResult:
    """What every BatchNorm spec shares: normalise with the given statistics in inference, with the
    batch's (biased) ones otherwise; `update` is the spec's own rule for the running statistics."""
    x = call.input
    if not call.uses_batch_stats:
        # Keras normalises with the variance it stores, which the harness may report re-expressed.
        variance = call.running_var_before if call.stored_var_before is None else call.stored_var_before
        assert call.running_mean_before is not None and variance is not None, "inference reads running statistics"
        y = _normalise(x, call.running_mean_before, variance, call.eps, call.weight, call.bias, call.channel_axis)
        return OracleResult(y, call.running_mean_before, call.running_var_before)
    if call.mini_batch is not None and call.mini_batch < x.shape[0]:
        return _in_mini_batches(call, update)
    mean, var, count = _batch_moments(x, call.channel_axis, call.per_activation)
    y = _normalise(x, mean, var, call.eps, call.weight, call.bias, call.channel_axis)
    if not call.updates_running_stats or call.running_mean_before is None:
        return OracleResult(y, call.running_mean_before, call.running_var_before, mean, var)
    running_mean, running_var = update(call, mean, var, count)
    return OracleResult(y, running_mean, running_var, mean, var)


def _in_mini_batches(call: BNCall, update: Update) -> OracleResult:
    """A training loop's step (Keras Model.fit): each mini-batch normalised with its own statistics
    and one update of the running ones, from the state the previous mini-batch left."""
    assert call.mini_batch is not None
    outputs, state = [], call
    for start in range(0, call.input.shape[0], call.mini_batch):
        chunk = dataclasses.replace(state, input=call.input[start : start + call.mini_batch], mini_batch=None)
        found = _batchnorm(chunk, update)
        outputs.append(found.output)
        state = dataclasses.replace(chunk, running_mean_before=found.running_mean, running_var_before=found.running_var)
    return OracleResult(np.concatenate(outputs), state.running_mean_before, state.running_var_before)


def _unbiased(var: np.ndarray, count: int) -> np.ndarray:
    unbiased: np.ndarray = var * count / max(count - 1, 1)
    return unbiased


def pytorch_batchnorm(call: BNCall) -> OracleResult:
    """PyTorch: biased variance to normalise, unbiased into running_var, momentum on the new batch
    (None: a cumulative average over num_batches_tracked)."""

    def update(call: BNCall, mean: np.ndarray, var: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        assert call.running_mean_before is not None and call.running_var_before is not None
        factor = 1.0 / ((call.num_batches_tracked_before or 0) + 1) if call.momentum is None else call.momentum
        return (
            (1 - factor) * call.running_mean_before + factor * mean,
            (1 - factor) * call.running_var_before + factor * _unbiased(var, count),
        )

    return _batchnorm(call, update)


def onnx_batchnorm(call: BNCall) -> OracleResult:
    """ONNX: population variance, momentum on the old value; inference uses the given statistics."""

    def update(call: BNCall, mean: np.ndarray, var: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        assert call.running_mean_before is not None and call.running_var_before is not None
        momentum = call.momentum
        assert momentum is not None, "ONNX has no cumulative average"
        return (call.running_mean_before * momentum + mean * (1 - momentum), call.running_var_before * momentum + var * (1 - momentum))

    return _batchnorm(call, update)


def keras_batchnorm(call: BNCall) -> OracleResult:
    """Keras 3: biased variance, momentum on the old value; the harness may report the moving
    variance re-expressed in PyTorch's unbiased convention (`call.running_var_reported`)."""

    def update(call: BNCall, mean: np.ndarray, var: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
        assert call.running_mean_before is not None and call.running_var_before is not None
        momentum = call.momentum
        assert momentum is not None, "Keras has no cumulative average"
        batch_var = _unbiased(var, count) if call.running_var_reported == "unbiased" else var
        return (
            call.running_mean_before * momentum + mean * (1 - momentum),
            call.running_var_before * momentum + batch_var * (1 - momentum),
        )

    return _batchnorm(call, update)
