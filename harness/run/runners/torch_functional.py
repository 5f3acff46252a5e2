"""`torch-functional`: each BatchNorm computed by `torch.batch_norm`, the op that the module's
forward and `torch.nn.functional.batch_norm` reach after their checks, as functional code and
libraries that call the op do. The module's forward and F.batch_norm refuse a training batch
of one value per channel ("Expected more than 1 value per channel when training"); the op does
not, and its unbiased variance of one value is NaN. Everything else (the factor of a cumulative
average, the buffers passed, num_batches_tracked) is _BatchNorm.forward's, line for line.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from harness.run.runners.base import ObservationLog
from harness.run.runners.torch_eager import TorchEagerRunner


class TorchFunctionalRunner(TorchEagerRunner):
    """Runs each step on the torch module, its BatchNorms' forwards calling torch.batch_norm."""

    def patcher(self, log: ObservationLog) -> Callable[[Any], None]:
        log.details["batchnorm_forward"] = "torch.batch_norm (no batch-size check)"
        return _call_the_op


def _call_the_op(model: Any) -> None:
    """Give every BatchNorm of `model` a forward that calls torch.batch_norm directly."""
    from torch.nn.modules.batchnorm import _BatchNorm

    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.forward = types.MethodType(_functional_forward, module)


def _functional_forward(self: Any, input: Any) -> Any:
    """torch/nn/modules/batchnorm.py _BatchNorm.forward, with torch.batch_norm in place of
    F.batch_norm (which adds _verify_batch_size and a positive-eps check in training)."""
    import torch

    self._check_input_dim(input)
    exponential_average_factor = 0.0 if self.momentum is None else self.momentum
    if self.training and self.track_running_stats and self.num_batches_tracked is not None:
        self.num_batches_tracked.add_(1)
        exponential_average_factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
    bn_training = True if self.training else (self.running_mean is None) and (self.running_var is None)
    kept = not self.training or self.track_running_stats
    return torch.batch_norm(
        input,
        self.weight,
        self.bias,
        self.running_mean if kept else None,
        self.running_var if kept else None,
        bn_training,
        exponential_average_factor,
        self.eps,
        torch.backends.cudnn.enabled,
    )
