"""User-style models for the cases in this folder, written as a user writes them: torch alone,
no weights or data downloaded. The cases name them with `model: {file: models.py, factory: ...}`."""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convolutions, each followed by a BatchNorm, and a residual
    addition (through a 1x1 convolution and its BatchNorm where the width changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """A ResNet-style net: a stem (conv, BatchNorm, ReLU), two basic blocks (the second one
    widening with a strided shortcut), global average pooling and a linear head."""

    def __init__(self, in_channels: int = 3, width: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(self.flatten(self.avgpool(x)))


class MobileNetBlock(nn.Module):
    """MobileNet's separable block: a depthwise 3x3 convolution, BatchNorm, ReLU6, then a
    pointwise 1x1 convolution, BatchNorm, ReLU6."""

    def __init__(self, channels: int = 8, out_channels: int = 16) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.bn_dw = nn.BatchNorm2d(channels)
        self.relu_dw = nn.ReLU6()
        self.pointwise = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn_pw = nn.BatchNorm2d(out_channels)
        self.relu_pw = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu_dw(self.bn_dw(self.depthwise(x)))
        return self.relu_pw(self.bn_pw(self.pointwise(x)))


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, as detection code writes it
    (torchvision.ops.FrozenBatchNorm2d): buffers only, always normalising with the running ones."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


class DetectionBackbone(nn.Module):
    """A detection-style backbone fine-tuned with frozen BatchNorms: a stem whose BatchNorm is a
    FrozenBatchNorm2d, then stages of conv + BatchNorm2d + ReLU that the fine-tuning code keeps in
    eval inside a train() model (`freeze_batchnorm: true` in the cases), then a head convolution."""

    def __init__(self, in_channels: int = 3, width: int = 8, stages: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), FrozenBatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            *[nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()) for _ in range(stages)]
        )
        self.head = nn.Conv2d(width, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_backbone(width: int = 8, stages: int = 2) -> DetectionBackbone:
    """The factory a training script calls."""
    return DetectionBackbone(width=width, stages=stages)
