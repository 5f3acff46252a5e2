"""Build a case's torch model from the model table, set modes as a user would, snapshot its state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from harness.core.case import BNConfig, Case, ModeSetting, Step
from harness.core.fields import MODULE_BN_ATTRIBUTES, MODULE_BN_BUFFERS, module_field
from harness.core.inputs import make_batch
from harness.core.models import layer_output_shape
from harness.run.runners.base import ObservationLog
from harness.run.runners.torch_user_model import build_user_model, materialize

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def make_batchnorm(rank: int, config: BNConfig) -> nn.Module:
    """A BatchNorm for inputs of `rank` with the case's configuration and initial values."""
    kind = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[rank]
    bn = kind(
        config.num_features, eps=config.eps, momentum=config.momentum, affine=config.affine, track_running_stats=config.track_running_stats
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            values, target = getattr(config, name), getattr(bn, name)
            if values is not None and target is not None:
                target.copy_(torch.tensor(values, dtype=target.dtype))
    return bn


class Block(nn.Module):
    """A `block` of the model table: its named layers are submodules, built in order (so that the
    seeded initialisation draws as a hand-written module would), the others functional ops."""

    def __init__(self, layers: list[dict[str, Any]], shape: list[int], config: BNConfig, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual  # forward returns x + layers(x)
        self.sequence: list[tuple[str, str | None]] = []
        for layer in layers:
            name = layer.get("name")
            if name:
                self.add_module(name, build_layer(layer, shape, config))
            self.sequence.append((layer["kind"], name))
            shape = layer_output_shape(layer, shape, config.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        for kind, name in self.sequence:
            if name:
                x = getattr(self, name)(x)
            elif kind == "relu":
                x = torch.relu(x)
            else:  # flatten
                x = x.flatten(1)
        return identity + x if self.residual else x


def build_layer(layer: dict[str, Any], shape: list[int], config: BNConfig) -> nn.Module:
    """The torch module of one layer of the model table, for an input of `shape`."""
    kind = layer["kind"]
    if kind == "block":
        return Block(layer["layers"], shape, config, residual=bool(layer.get("residual")))
    if kind == "batchnorm":  # with its own values where the case gives them (bn_by_path)
        return make_batchnorm(len(shape), config.overridden(layer["bn"]) if layer.get("bn") else config)
    if kind == "conv2d":
        groups = shape[1] if layer.get("depthwise") else 1  # depthwise: one filter per channel
        return nn.Conv2d(
            shape[1], config.num_features, kernel_size=layer["kernel"], padding=layer["padding"], bias=layer["bias"], groups=groups
        )
    if kind == "linear":
        return nn.Linear(shape[1], layer["out_features"] or config.num_features, bias=layer["bias"])
    raise ValueError(f"layer kind {kind!r} is no module")


def build_model(case: Case) -> nn.Module:
    """The case's model, seeded, in the case's dtype, with the case's modes set."""
    torch.manual_seed(case.model_seed)
    spec = case.model_spec
    if case.user_model is not None:
        model = _build_user_model(case)
    else:
        model = build_layer(dict(spec.root), list(case.input.shape), case.bn)
        assert tuple(name for name, _ in model.named_modules()) == spec.submodule_paths, "the torch builder disagrees with the model table"
    model = model.to(TORCH_DTYPES[case.bn.dtype])
    if case.torch_memory_format == "channels_last":
        model = model.to(memory_format=_channels_last(len(case.input.shape)))
    apply_mode(model, case.mode)
    return model


def _build_user_model(case: Case) -> nn.Module:
    """A user's model from its factory, as the loader's probe built it, with the case's
    `bn_by_path` values written into its BatchNorms (as `model.bn.eps = ...` would)."""
    assert case.user_model is not None and case.structure is not None
    model = build_user_model(case.user_model.to_json(), case.model_seed)
    materialize(model, torch.from_numpy(make_batch(case.input, case.input.seed)).to(torch.float32))
    found = tuple(path for path, _ in model.named_modules())
    if found != tuple(path for path, _ in case.structure.modules):
        raise RuntimeError(f"{case.model} built other submodules than when the case was loaded (does the factory depend on chance?)")
    set_batchnorm_values(model, [(path, list(values)) for path, values in case.bn_by_path])
    return model


def set_batchnorm_values(model, bn_by_path) -> None:
    """Give each BatchNorm of (path, [(name, value)]) its own values, as `model.bn.eps = ...` and
    `model.bn.running_var.copy_(...)` would. Plain data in: the repro scripts carry it as it is."""
    with torch.no_grad():
        for path, values in bn_by_path:
            bn = model.get_submodule(path)
            for name, value in values:
                if name in ("eps", "momentum"):
                    setattr(bn, name, value)
                else:
                    getattr(bn, name).copy_(torch.tensor(value, dtype=getattr(bn, name).dtype))


def uses_batch_stats(bn: nn.Module) -> bool:
    """torch's own rule (_BatchNorm.forward): batch statistics in training, or with no running
    statistics. A frozen BatchNorm (no torch BatchNorm) always uses its running ones."""
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        return False
    return bool(bn.training or (bn.running_mean is None and bn.running_var is None))


def updates_running_stats(bn: nn.Module) -> bool:
    """Whether a forward updates the BatchNorm's running statistics."""
    return isinstance(bn, nn.modules.batchnorm._BatchNorm) and bool(bn.training and bn.track_running_stats)


def _channels_last(rank: int) -> torch.memory_format:
    return torch.channels_last if rank == 4 else torch.channels_last_3d


def in_memory_format(batch: torch.Tensor, case: Case) -> torch.Tensor:
    """The batch in the case's torch memory format (channels_last: NHWC in memory)."""
    if case.torch_memory_format == "channels_last":
        return batch.contiguous(memory_format=_channels_last(batch.dim()))
    return batch


def apply_mode(model: nn.Module, mode: ModeSetting) -> None:
    """`model.train()` / `model.get_submodule(path).eval()`, in the order given, parents first."""
    for path, training in mode.assignments:
        model.get_submodule(path).train(training)


def apply_state(model: nn.Module, case: Case, step: Step) -> None:
    """A set_state step (`model.bn.running_var.copy_(values)`) or a reset_running_stats one
    (`bn.reset_running_stats()` on each BatchNorm named, or on every one), as the user would."""
    reset = step.reset if step.kind == "reset_running_stats" else None
    set_batchnorm_state(model, [(item.path, item.name, item.values) for item in step.state], reset, case.model_spec.batchnorm_paths)


def set_batchnorm_state(model, state, reset, bn_paths) -> None:
    """Write each (path, tensor name, values) of `state` into the module's tensor; then, unless
    `reset` is None, reset the running statistics of the BatchNorms at `reset` (empty: all of
    `bn_paths`). Plain data in: the repro scripts carry this function as it is."""
    with torch.no_grad():
        for path, name, values in state:
            tensor = getattr(model.get_submodule(path), name)
            tensor.copy_(torch.tensor(values, dtype=tensor.dtype))
    if reset is not None:
        for path in bn_paths:
            module = model.get_submodule(path)
            if (not reset or path in reset) and hasattr(module, "reset_running_stats"):  # a frozen BatchNorm has none
                module.reset_running_stats()


def to_tensor(batch: np.ndarray, dtype: str) -> torch.Tensor:
    """The float64 batch cast to the case's dtype (round to nearest, as every runner sees it)."""
    return torch.from_numpy(batch).to(TORCH_DTYPES[dtype])


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 copy of a tensor, exact for every floating dtype torch has. Always a copy: for a
    float64 tensor `.to(float64).numpy()` is a view, and a running buffer recorded before a step
    would then change with the step."""
    return np.array(tensor.detach().to(torch.float64).cpu().numpy(), copy=True)


def batchnorms(model: nn.Module, case: Case) -> dict[str, nn.Module]:
    """The BatchNorm submodules by path."""
    return {path: model.get_submodule(path) for path in case.model_spec.batchnorm_paths}


def snapshot_module(model: nn.Module, case: Case, step: int, log: ObservationLog) -> None:
    """Record every submodule's training flag, every BN buffer and BN attribute after `step`."""
    for path, module in model.named_modules():
        log.value(step, module_field(path, "training"), bool(module.training))
    for path, bn in batchnorms(model, case).items():
        for name in MODULE_BN_BUFFERS:
            buffer = getattr(bn, name, None)  # a frozen BatchNorm counts no batches
            if buffer is None:
                continue
            if name == "num_batches_tracked":
                log.value(step, module_field(path, name), int(buffer))
            else:
                log.array(step, module_field(path, name), to_numpy(buffer), case.bn.dtype)
        for name in MODULE_BN_ATTRIBUTES:
            log.value(step, module_field(path, name), _plain(getattr(bn, name, None)))


def module_buffers(model: nn.Module, case: Case) -> dict[str, dict[str, np.ndarray]]:
    """running_mean / running_var of each BN, as float64 arrays (for graph initializer checks)."""
    return {
        path: {name: to_numpy(getattr(bn, name)) for name in ("running_mean", "running_var") if getattr(bn, name) is not None}
        for path, bn in batchnorms(model, case).items()
    }


def _plain(value: Any) -> bool | int | float | None:
    return value if value is None or isinstance(value, (bool, int, float)) else float(value)
