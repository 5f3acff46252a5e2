"""Build a case's torch model from the registry, set modes as a user would, snapshot its state."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from harness.core.case import BNConfig, Case, ModeSetting
from harness.core.fields import MODULE_BN_ATTRIBUTES, MODULE_BN_BUFFERS, module_field
from harness.core.models import MODEL_SPECS
from harness.run.runners.base import ObservationLog

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_BATCHNORM_BY_RANK = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}


def make_batchnorm(kind: type[nn.Module], config: BNConfig) -> nn.Module:
    """A BatchNorm with the case's configuration and initial values."""
    bn = kind(
        config.num_features, eps=config.eps, momentum=config.momentum, affine=config.affine, track_running_stats=config.track_running_stats
    )
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            values, target = getattr(config, name), getattr(bn, name)
            if values is not None and target is not None:
                target.copy_(torch.tensor(values, dtype=target.dtype))
    return bn


class ConvBN(nn.Module):
    def __init__(self, in_channels: int, config: BNConfig, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, config.num_features, kernel_size=3, padding=padding)
        self.bn = make_batchnorm(nn.BatchNorm2d, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class ForumNet(nn.Module):
    """The net of the forum thread that started the project."""

    def __init__(self, in_channels: int, height: int, width: int, config: BNConfig) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, config.num_features, kernel_size=3, bias=False)
        self.bn = make_batchnorm(nn.BatchNorm2d, config)
        self.fc1 = nn.Linear(config.num_features * (height - 2) * (width - 2), 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        return torch.relu(self.fc1(x.flatten(1)))


class Head(nn.Module):
    def __init__(self, config: BNConfig) -> None:
        super().__init__()
        self.block = ConvBN(config.num_features, config, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class NestedTwoBN(nn.Module):
    def __init__(self, in_channels: int, config: BNConfig) -> None:
        super().__init__()
        self.stem = ConvBN(in_channels, config, padding=1)
        self.head = Head(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.stem(x)))


def build_model(case: Case) -> nn.Module:
    """The case's model, seeded, in the case's dtype, with the case's modes set."""
    shape = case.input.shape
    torch.manual_seed(case.model_seed)
    if case.model.startswith("batchnorm"):
        model: nn.Module = make_batchnorm(_BATCHNORM_BY_RANK[len(shape)], case.bn)
    elif case.model == "conv_bn":
        model = ConvBN(shape[1], case.bn)
    elif case.model == "forum_net":
        model = ForumNet(shape[1], shape[2], shape[3], case.bn)
    else:
        model = NestedTwoBN(shape[1], case.bn)
    expected_paths = MODEL_SPECS[case.model].submodule_paths
    assert tuple(name for name, _ in model.named_modules()) == expected_paths, "registry out of date"
    model = model.to(TORCH_DTYPES[case.bn.dtype])
    apply_mode(model, case.mode)
    return model


def apply_mode(model: nn.Module, mode: ModeSetting) -> None:
    """`model.train()` / `model.get_submodule(path).eval()`, in the order given, parents first."""
    for path, training in mode.assignments:
        model.get_submodule(path).train(training)


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
    return {path: model.get_submodule(path) for path in MODEL_SPECS[case.model].batchnorm_paths}


def snapshot_module(model: nn.Module, case: Case, step: int, log: ObservationLog) -> None:
    """Record every submodule's training flag, every BN buffer and BN attribute after `step`."""
    for path, module in model.named_modules():
        log.value(step, module_field(path, "training"), bool(module.training))
    for path, bn in batchnorms(model, case).items():
        for name in MODULE_BN_BUFFERS:
            buffer = getattr(bn, name)
            if buffer is None:
                continue
            if name == "num_batches_tracked":
                log.value(step, module_field(path, name), int(buffer))
            else:
                log.array(step, module_field(path, name), to_numpy(buffer), case.bn.dtype)
        for name in MODULE_BN_ATTRIBUTES:
            log.value(step, module_field(path, name), _plain(getattr(bn, name)))


def module_buffers(model: nn.Module, case: Case) -> dict[str, dict[str, np.ndarray]]:
    """running_mean / running_var of each BN, as float64 arrays (for graph initializer checks)."""
    return {
        path: {name: to_numpy(getattr(bn, name)) for name in ("running_mean", "running_var") if getattr(bn, name) is not None}
        for path, bn in batchnorms(model, case).items()
    }


def _plain(value: Any) -> bool | int | float | None:
    return value if value is None or isinstance(value, (bool, int, float)) else float(value)
