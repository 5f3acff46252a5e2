"""Walk a case's steps on the user's torch module, as the user would, logging state after each.

The deployed artifact is the module itself until an export step hands back another one (an
onnxruntime session); from then on forwards run both, so that what the export did to the
user's module shows next to what the graph computes.

One walk can serve several runners (lanes) that make the same export and differ only in what
runs the graph: the module is built, stepped and exported once, and each lane deploys the export
in its own executor. A lane whose executor fails ends alone; a failure of the module or of the
export ends every lane.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from harness.core.case import Case, Step
from harness.core.fields import OUTPUT, deployed_field, module_field
from harness.core.inputs import make_batch, step_batch
from harness.core.results import BNCall, RunResult
from harness.run.runners.base import ObservationLog, clean_reason
from harness.run.runners.torch_models import (
    apply_mode,
    apply_state,
    batchnorms,
    build_model,
    in_memory_format,
    snapshot_module,
    to_numpy,
    to_tensor,
    updates_running_stats,
    uses_batch_stats,
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


class Exported(Protocol):
    """What an export step produced, before any runtime opened it."""

    def record(self, log: ObservationLog) -> None:
        """Log what the export did (details, the artifact) into one lane's log."""


# (model, example input, the export step) -> the export; raises StepFailed when the exporter refuses.
Exporter = Callable[[nn.Module, torch.Tensor, Step], Exported]


@dataclass
class Lane:
    """One runner's share of a walk: its log, and how it deploys an export (None: it never
    deploys one, the module stays what runs, as in torch-eager)."""

    log: ObservationLog
    deploy: Callable[[Any], Deployed] | None = None
    deployed: Deployed | None = None
    failure: StepFailed | None = None
    failed_step: int | None = None

    def fail(self, step: int, failure: StepFailed) -> None:
        self.failure, self.failed_step = failure, step

    def result(self) -> RunResult:
        if self.failure is None:
            return self.log.result()
        self.log.details["failed_step"] = self.failed_step
        return self.log.result(self.failure.status, self.failure.reason)


def run_steps(
    case: Case,
    lanes: Sequence[Lane],
    export: Exporter | None = None,
    compile_model: Callable[[nn.Module], Callable] | None = None,
    patch_model: Callable[[nn.Module], None] | None = None,
) -> list[RunResult]:
    """Build the model, walk every step for every lane, and return each lane's result (up to the
    step that failed it). With `compile_model`, forwards call what it returns (torch.compile);
    `patch_model` changes the built model in place first (torch-functional's BatchNorm forwards)."""
    model = build_model(case)
    if patch_model is not None:
        patch_model(model)
    example = in_memory_format(to_tensor(make_batch(case.input, case.input.seed), case.input.dtype), case)
    module_calls: dict[str, BNCall] = {}
    bn_outputs: dict[str, np.ndarray] = {}
    taps = _BatchNormTaps(model, case, module_calls, bn_outputs)
    forward: Callable = model
    if compile_model is not None:
        # Compiled code must not trace our hooks; a bare BatchNorm's call is recorded from outside.
        taps.detach()
        forward = compile_model(model)
        if "" in taps.bns:
            record_bare_call = _recorder("", module_calls)
            forward = _recording_before(forward, lambda batch: record_bare_call(taps.bns[""], (batch,)))
    for index, step in enumerate(case.steps):
        live = [lane for lane in lanes if lane.failure is None]
        if not live:
            break
        try:
            if step.kind in ("forward", "train_step"):
                batch = in_memory_format(to_tensor(step_batch(case.input, step), case.input.dtype), case)
                module_calls.clear()
                in_float64 = _float64_output(model, batch) if "" not in taps.bns else None
                module_output = _module_forward(forward, batch)
                for lane in live:
                    _forward_lane(lane, case, index, batch, module_output, module_calls, bn_outputs)
                    if in_float64 is not None:
                        lane.log.model_oracle[index] = in_float64
                bn_outputs.clear()
            elif step.kind == "export":
                exported = None
                if export is not None and any(lane.deploy is not None for lane in live):
                    with taps.detached():  # the user's module has no hooks: the exporter must not see ours
                        exported = export(model, example, step)
                for lane in live:
                    if exported is not None and lane.deploy is not None:
                        exported.record(lane.log)
                        try:
                            lane.deployed = lane.deploy(exported)
                        except StepFailed as failure:  # this lane's runtime refused the graph
                            lane.fail(index, failure)
            elif step.kind in ("set_state", "reset_running_stats"):
                apply_state(model, case, step)  # the user's module: an exported artifact keeps what it was given
            else:
                assert step.mode is not None
                apply_mode(model, step.mode)
        except StepFailed as failure:  # the module or the export: every lane ends here
            for lane in live:
                lane.fail(index, failure)
            break
        for lane in live:
            if lane.failure is None:
                snapshot_module(model, case, index, lane.log)
                if lane.deployed is None:
                    record_module_as_deployed(model, case, index, lane.log)
                else:
                    lane.deployed.record_state(index, lane.log)
    return [lane.result() for lane in lanes]


def _forward_lane(
    lane: Lane,
    case: Case,
    index: int,
    batch: torch.Tensor,
    module_output: np.ndarray,
    module_calls: dict[str, BNCall],
    bn_outputs: dict[str, np.ndarray],
) -> None:
    """Log one forward step for one lane: the module's output, and the deployed artifact's."""
    log = lane.log
    log.array(index, module_field("", OUTPUT), module_output, case.input.dtype)
    if lane.deployed is None:  # the module is what is deployed: its calls face the oracles
        log.bn_calls.update({(index, path): call for path, call in module_calls.items()})
        for path, values in bn_outputs.items():
            log.array(index, deployed_field(path, OUTPUT), values, case.input.dtype)
        log.array(index, OUTPUT, module_output, case.input.dtype)
        return
    try:
        log.array(index, OUTPUT, lane.deployed.forward(batch), case.input.dtype)
    except StepFailed as failure:  # this lane's runtime failed on the batch
        lane.fail(index, failure)


class _BatchNormTaps:
    """Forward hooks on each BatchNorm: what it is given (for the oracles) and what it returns."""

    def __init__(self, model: nn.Module, case: Case, calls: dict[str, BNCall], outputs: dict[str, np.ndarray]) -> None:
        self.bns = batchnorms(model, case)
        self.calls, self.outputs = calls, outputs
        self.handles: list[Any] = []
        self.attach()

    def attach(self) -> None:
        for path, bn in self.bns.items():
            self.handles.append(bn.register_forward_pre_hook(_recorder(path, self.calls)))
            if path:  # a bare BatchNorm's output is the model's
                self.handles.append(
                    bn.register_forward_hook(lambda _, __, output, path=path: self.outputs.__setitem__(path, to_numpy(output)))
                )

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    @contextlib.contextmanager
    def detached(self) -> Iterator[None]:
        """Without the hooks: torch.export traces hooks, and ours (to_numpy on a traced tensor)
        would make the dynamo exporter fall back to another capture strategy than the user's."""
        self.detach()
        try:
            yield
        finally:
            self.attach()


def _recorder(path: str, calls: dict[str, BNCall]):
    """A forward pre-hook that records what the BatchNorm at `path` is given, in PyTorch's terms."""

    def record(bn: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        buffers = {name: None if getattr(bn, name) is None else to_numpy(getattr(bn, name)) for name in ("running_mean", "running_var")}
        tracked = getattr(bn, "num_batches_tracked", None)  # a frozen BatchNorm has none
        calls[path] = BNCall(
            semantics="pytorch",
            input=to_numpy(inputs[0]),
            channel_axis=1,
            uses_batch_stats=uses_batch_stats(bn),
            updates_running_stats=updates_running_stats(bn),
            eps=float(bn.eps),
            momentum=getattr(bn, "momentum", None),
            weight=None if bn.weight is None else to_numpy(bn.weight),
            bias=None if bn.bias is None else to_numpy(bn.bias),
            running_mean_before=buffers["running_mean"],
            running_var_before=buffers["running_var"],
            num_batches_tracked_before=None if tracked is None else int(tracked),
        )

    return record


def _recording_before(forward: Callable, record: Callable) -> Callable:
    def recorded(batch: torch.Tensor):
        record(batch)
        return forward(batch)

    return recorded


def _float64_output(model: nn.Module, batch: torch.Tensor) -> np.ndarray | None:
    """The model's output for `batch` computed in float64 by a copy in the same modes and state
    (the copy's own statistics updates are thrown away); None if float64 cannot run it."""
    twin = copy.deepcopy(model)
    for module in twin.modules():  # the harness's taps came along with the copy
        module._forward_pre_hooks.clear()
        module._forward_hooks.clear()
    # A copy shares nothing with the user's module, unless its code keeps a reference to the
    # original (a closure over a submodule): then the twin's forward would step the user's state.
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    try:
        with torch.no_grad():
            output = to_numpy(twin.double()(batch.to(torch.float64)))
    except Exception:  # a model float64 cannot run is left without this oracle
        output = None
    after = model.state_dict()
    if any(not _same_tensor(before[name], after[name]) for name in before):
        model.load_state_dict(before)  # put the user's state back; this oracle cannot be trusted
        return None
    return output


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal, NaN at the same places counting as equal (a statistic may hold NaN)."""
    if a.is_floating_point():
        return a.shape == b.shape and bool(torch.allclose(a, b, rtol=0.0, atol=0.0, equal_nan=True))
    return torch.equal(a, b)


def _module_forward(forward: Callable, batch: torch.Tensor) -> np.ndarray:
    try:
        with torch.no_grad():
            return to_numpy(forward(batch))
    except Exception as error:  # the module's, or the compiler's (torch._dynamo's own error types)
        raise StepFailed("run_failed", error) from None


def record_module_as_deployed(model: nn.Module, case: Case, step: int, log: ObservationLog) -> None:
    """In torch the deployed artifact is the module: log its BN state under the deployed names."""
    for path, bn in batchnorms(model, case).items():
        log.value(step, deployed_field(path, "uses_batch_stats"), uses_batch_stats(bn))
        for name in ("running_mean", "running_var"):
            buffer = getattr(bn, name)
            if buffer is not None:
                log.array(step, deployed_field(path, name), to_numpy(buffer), case.bn.dtype)
