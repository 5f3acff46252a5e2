"""Walk a case's steps on the user's torch module, as the user would, logging state after each.

The deployed artifact is the module itself until an export step hands back another one (an
onnxruntime session); from then on forwards run both, so that what the export did to the
user's module shows next to what the graph computes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from harness.case import Case, Step
from harness.fields import OUTPUT, deployed_field, module_field
from harness.inputs import make_batch
from harness.results import BNCall, RunResult
from harness.runners.base import ObservationLog, clean_reason
from harness.runners.torch_models import (
    apply_mode,
    batchnorms,
    build_model,
    snapshot_module,
    to_numpy,
    to_tensor,
)


class StepFailed(Exception):
    """A framework refused a step; the run ends with `status` and keeps what it observed."""

    def __init__(self, status: str, error: BaseException) -> None:
        self.status = status
        self.reason = clean_reason(f"{type(error).__name__}: {error}")
        super().__init__(self.reason)


class Deployed(Protocol):
    """What a user ships after an export: it computes outputs and holds BN state."""

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """The output for `batch`, as float64."""

    def record_state(self, step: int, log: ObservationLog) -> None:
        """Log `<bn>.uses_batch_stats`, `<bn>.running_mean`, `<bn>.running_var` as the artifact holds them."""


Exporter = Callable[[nn.Module, torch.Tensor, Step, ObservationLog], Deployed | None]


def run_steps(case: Case, log: ObservationLog, export: Exporter) -> RunResult:
    """Build the model, walk every step, and return what was observed (up to a failed step)."""
    model = build_model(case)
    example = to_tensor(make_batch(case.input, case.input.seed), case.input.dtype)
    deployed: Deployed | None = None
    module_calls: dict[str, BNCall] = {}
    bn_outputs: dict[str, np.ndarray] = {}
    for path, bn in batchnorms(model, case).items():
        bn.register_forward_pre_hook(_recorder(path, module_calls))
        if path:  # a bare BatchNorm's output is the model's
            bn.register_forward_hook(lambda _, __, output, path=path: bn_outputs.__setitem__(path, to_numpy(output)))
    try:
        for index, step in enumerate(case.steps):
            if step.kind in ("forward", "train_step"):
                batch = to_tensor(make_batch(case.input, step.seed), case.input.dtype)
                module_calls.clear()
                module_output = _module_forward(model, batch)
                if deployed is None:  # the module is what is deployed: its calls face the oracles
                    log.bn_calls.update({(index, path): call for path, call in module_calls.items()})
                    for path, values in bn_outputs.items():
                        log.array(index, deployed_field(path, OUTPUT), values, case.input.dtype)
                bn_outputs.clear()
                log.array(index, module_field("", OUTPUT), module_output, case.input.dtype)
                output = module_output if deployed is None else deployed.forward(batch)
                log.array(index, OUTPUT, output, case.input.dtype)
            elif step.kind == "export":
                deployed = export(model, example, step, log) or deployed
            else:
                assert step.mode is not None
                apply_mode(model, step.mode)
            snapshot_module(model, case, index, log)
            if deployed is None:
                record_module_as_deployed(model, case, index, log)
            else:
                deployed.record_state(index, log)
    except StepFailed as failure:
        log.details["failed_step"] = index
        return log.result(failure.status, failure.reason)
    return log.result()


def _recorder(path: str, calls: dict[str, BNCall]):
    """A forward pre-hook that records what the BatchNorm at `path` is given, in PyTorch's terms."""

    def record(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        buffers = {name: None if getattr(bn, name) is None else to_numpy(getattr(bn, name)) for name in ("running_mean", "running_var")}
        tracked = bn.num_batches_tracked
        calls[path] = BNCall(
            semantics="pytorch",
            input=to_numpy(inputs[0]),
            channel_axis=1,
            uses_batch_stats=bool(bn.training or (bn.running_mean is None and bn.running_var is None)),
            updates_running_stats=bool(bn.training and bn.track_running_stats),
            eps=float(bn.eps),
            momentum=bn.momentum,
            weight=None if bn.weight is None else to_numpy(bn.weight),
            bias=None if bn.bias is None else to_numpy(bn.bias),
            running_mean_before=buffers["running_mean"],
            running_var_before=buffers["running_var"],
            num_batches_tracked_before=None if tracked is None else int(tracked),
        )

    return record


def _module_forward(model: nn.Module, batch: torch.Tensor) -> np.ndarray:
    try:
        with torch.no_grad():
            return to_numpy(model(batch))
    except (RuntimeError, ValueError) as error:
        raise StepFailed("run_failed", error) from None


def record_module_as_deployed(model: nn.Module, case: Case, step: int, log: ObservationLog) -> None:
    """In torch the deployed artifact is the module: log its BN state under the deployed names."""
    for path, bn in batchnorms(model, case).items():
        # torch's own rule (_BatchNorm.forward): batch statistics in training, or with no running stats.
        uses_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
        log.value(step, deployed_field(path, "uses_batch_stats"), bool(uses_batch_stats))
        for name in ("running_mean", "running_var"):
            buffer = getattr(bn, name)
            if buffer is not None:
                log.array(step, deployed_field(path, name), to_numpy(buffer), case.bn.dtype)
