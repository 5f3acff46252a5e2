"""Test-only runners that each inject ONE deviation of known cause into an otherwise faithful
torch-eager run, for tests/test_known_causes.py: the bench that proves attribution right.

Every runner walks the case exactly as `torch-eager` does (`harness.run.runners.torch_steps.run_steps`,
with the same BatchNorm taps), under its own name. The deviation is put in by patching, for the
duration of the run only, two names `run_steps` looks up in `harness.run.runners.torch_steps`:

- `build_model`: the model is built as usual, then `alter` changes it (a parameter, or a BatchNorm's
  `forward` replaced by a wrapper). The taps are attached after the build, so the forward pre-hook
  still records what the module was given, in PyTorch's terms: the oracle sees the semantics and
  parameters the runner claims.
- `snapshot_module`: called right after each step, before the step's state is logged; `after_step`
  may change the model there (at an export step: what a faulty exporter does to the user's module).

Each runner says which class the harness should give its divergences (`expected`), at which steps
the deviation acts (`acting_steps`; divergences at other steps carry state from those), and to
which cases it applies (`applies`: a running-statistics deviation needs a BatchNorm that updates).
"""

from __future__ import annotations

import contextlib
import functools
import math
import types
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.case import Case
from harness.core.inputs import make_batch
from harness.core.results import RunResult
from harness.run.runners import torch_steps
from harness.run.runners.torch_eager import TorchEagerRunner
from harness.run.runners.torch_models import batchnorms, to_tensor

IMPLEMENTATION = "implementation deviates"
CONVENTIONS = "conventions differ"
STATE = "state changed by a step"

FORWARD_KINDS = ("forward", "train_step")
INJECTED_EPS = 1e-3
NAN_CHANNEL = 1


@contextlib.contextmanager
def _replaced(owner: Any, name: str, replacement: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _initial_training(case: Case, path: str) -> bool:
    """Whether the BatchNorm at `path` is in training mode after the case's `mode` (parents first)."""
    training = True
    for assigned, flag in case.mode.assignments:
        if assigned == "" or path == assigned or path.startswith(assigned + "."):
            training = flag
    return training


def bn_trains(case: Case) -> bool:
    """Whether every BatchNorm of the case starts in training mode (no set_mode in our cases)."""
    from harness.core.models import MODEL_SPECS

    return all(_initial_training(case, path) for path in MODEL_SPECS[case.model].batchnorm_paths)


def bn_evaluates(case: Case) -> bool:
    from harness.core.models import MODEL_SPECS

    return not any(_initial_training(case, path) for path in MODEL_SPECS[case.model].batchnorm_paths)


class InjectedRunner(TorchEagerRunner):
    """torch-eager with one deviation injected (see the module docstring)."""

    name: ClassVar[str]
    expected: ClassVar[str]  # the attribution class every divergence of this runner must get
    parameter: ClassVar[str | None] = None  # the BatchNorm attribute the deviation sets otherwise, if any

    def applies(self, case: Case) -> bool:
        """Whether the deviation shows in `case` at all."""
        return True

    def acting_steps(self, case: Case) -> set[int]:
        """The steps at which the deviation itself acts (by default every forward)."""
        return {index for index, step in enumerate(case.steps) if step.kind in FORWARD_KINDS}

    def parts_running_stats(self, case: Case) -> bool:
        """Whether the running statistics differ from torch-eager's after a step the deviation acts at
        (so that later steps, an export included, carry that difference)."""
        return False

    def alter(self, model: nn.Module, case: Case) -> None:
        """Change the freshly built model (before the harness's taps are attached)."""

    def after_step(self, model: nn.Module, case: Case, index: int) -> None:
        """Change the model at the end of step `index`, before its state is logged."""

    def run(self, case: Case) -> RunResult:
        build_model, snapshot_module = torch_steps.build_model, torch_steps.snapshot_module
        seen: set[int] = set()

        def build(built_case: Case) -> nn.Module:
            model = build_model(built_case)
            self.alter(model, built_case)
            return model

        def snapshot(model: nn.Module, snap_case: Case, index: int, log) -> None:
            if index not in seen:  # once per step, whatever the number of lanes
                seen.add(index)
                self.after_step(model, snap_case, index)
            snapshot_module(model, snap_case, index, log)

        with _replaced(torch_steps, "build_model", build), _replaced(torch_steps, "snapshot_module", snapshot):
            return super().run(case)


def _wrap_forwards(
    model: nn.Module,
    case: Case,
    make: Callable[[nn.Module, Callable[[torch.Tensor], torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]],
) -> None:
    """Replace each BatchNorm's `forward` by `make(bn, original_forward)`; hooks still run around it.
    Bound to the module (a method, not a closure over it), so that a deep copy of the model (the
    harness's float64 twin) runs the copy's own state, not this module's."""

    def forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return make(self, functools.partial(type(self).forward, self))(x)

    for bn in batchnorms(model, case).values():
        bn.forward = types.MethodType(forward, bn)


def _batch_axes(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.ndim)]


# 1 -------------------------------------------------------------------------------------------
class EpsRunner(InjectedRunner):
    """Every BatchNorm's eps is 1e-3 (Keras's default) where the case says 1e-5; the module honestly
    carries it, so the taps record eps=1e-3 and the runner follows PyTorch's formula with it.

    Expected: "conventions differ" (eps). Each side is within its own spec's oracle; the reference's
    input and state through the same spec with the other eps gives another output. Running
    statistics do not read eps: only outputs diverge (and the `module.<bn>.eps` attribute itself)."""

    name = "inject-eps"
    expected = CONVENTIONS
    parameter = "eps"

    def alter(self, model, case):
        for bn in batchnorms(model, case).values():
            bn.eps = INJECTED_EPS


# 2 -------------------------------------------------------------------------------------------
class MomentumRunner(InjectedRunner):
    """momentum in the other convention: 1 - momentum (ONNX's and Keras's meaning, the weight of the
    old value) set on the PyTorch module, which honestly carries it (the taps record 0.9).

    Expected: "conventions differ" (momentum). Both sides follow PyTorch's update rule with their own
    momentum; the reference's state updated with 0.9 is another value. Only running statistics
    diverge, so the deviation needs a BatchNorm in training mode."""

    name = "inject-momentum"
    expected = CONVENTIONS
    parameter = "momentum"

    def applies(self, case):
        return bn_trains(case)

    def parts_running_stats(self, case):
        return True

    def alter(self, model, case):
        for bn in batchnorms(model, case).values():
            bn.momentum = 1.0 - bn.momentum


# 3 -------------------------------------------------------------------------------------------
class BiasedVarianceRunner(InjectedRunner):
    """A training forward computed by hand, as PyTorch's formula except that running_var is updated
    with the biased (population) batch variance, while the taps record semantics="pytorch" (which
    documents the unbiased one).

    Expected: "implementation deviates", this runner the deviating side: its running_var is
    momentum * var / (n - 1) away from its own spec's oracle. Outputs (batch statistics, biased in
    both) agree."""

    name = "inject-biased-var"
    expected = IMPLEMENTATION

    def applies(self, case):
        return bn_trains(case)

    def parts_running_stats(self, case):
        return True

    def alter(self, model, case):
        def make(bn, original):
            def forward(x):
                if not (bn.training and bn.track_running_stats):
                    return original(x)
                axes = _batch_axes(x)
                mean, biased = x.mean(dim=axes), x.var(dim=axes, unbiased=False)
                with torch.no_grad():
                    bn.num_batches_tracked.add_(1)
                    bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean)
                    bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * biased)  # the deviation
                return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

            return forward

        _wrap_forwards(model, case, make)


# 4 -------------------------------------------------------------------------------------------
class StaleStatsRunner(InjectedRunner):
    """At each `train_step` the running statistics are left as they were (the forward computes the
    output, num_batches_tracked counts the step), while the taps record updates_running_stats=True.

    Expected: "implementation deviates", this runner the deviating side: its running statistics are
    the whole update away from its own spec's oracle. Plain `forward` steps update normally; their
    divergences carry the stale state and follow from the train step."""

    name = "inject-stale-stats"
    expected = IMPLEMENTATION

    def applies(self, case):
        return bn_trains(case)

    def parts_running_stats(self, case):
        return True

    def acting_steps(self, case):
        return {index for index, step in enumerate(case.steps) if step.kind == "train_step"}

    def alter(self, model, case):
        forward_steps = iter([index for index, step in enumerate(case.steps) if step.kind in FORWARD_KINDS])
        current: dict[str, int] = {}
        # Registered before the harness's taps: it knows the step before any BatchNorm runs.
        model.register_forward_pre_hook(lambda module, inputs: current.__setitem__("step", next(forward_steps)))

        def make(bn, original):
            def forward(x):
                if case.steps[current["step"]].kind != "train_step":
                    return original(x)
                kept = bn.running_mean.clone(), bn.running_var.clone()
                output = original(x)
                with torch.no_grad():
                    bn.running_mean.copy_(kept[0])
                    bn.running_var.copy_(kept[1])
                return output

            return forward

        _wrap_forwards(model, case, make)


# 5 -------------------------------------------------------------------------------------------
class ExportFlipsModeRunner(InjectedRunner):
    """At an export step every BatchNorm is left in training mode (torch-eager's export changes
    nothing), as an exporter that restores modes with a recursive model.train() would.

    Expected: "state changed by a step", naming the export step and this runner: the module's
    training flags and the deployed uses_batch_stats change at the export; the later forward
    normalises with batch statistics and updates the running ones, which follows from it. Only
    shows where a BatchNorm is in eval mode before the export."""

    name = "inject-export-mode"
    expected = STATE

    def applies(self, case):
        return bn_evaluates(case)

    def acting_steps(self, case):
        return {index for index, step in enumerate(case.steps) if step.kind == "export"}

    def after_step(self, model, case, index):
        if case.steps[index].kind == "export":
            for bn in batchnorms(model, case).values():
                bn.train()


# 6 -------------------------------------------------------------------------------------------
class ExportStepsBuffersRunner(InjectedRunner):
    """At an export step the exporter runs one training-mode forward of the whole model on the
    example batch (input.seed) and restores every module's mode: the running statistics and
    num_batches_tracked step once, as a tracing exporter in training mode does.

    Expected: "state changed by a step", naming the export step and this runner: the module's and
    the deployed running statistics change at the export; later forwards read that state."""

    name = "inject-export-steps"
    expected = STATE

    def acting_steps(self, case):
        return {index for index, step in enumerate(case.steps) if step.kind == "export"}

    def after_step(self, model, case, index):
        if case.steps[index].kind != "export":
            return
        modes = {module: module.training for module in model.modules()}
        example = to_tensor(make_batch(case.input, case.input.seed), case.input.dtype)
        model.train()
        with torch.no_grad():
            model(example)
        for module, training in modes.items():
            module.train(training)


# 7 -------------------------------------------------------------------------------------------
class HalfArithmeticRunner(InjectedRunner):
    """Each BatchNorm computes in float16 (input, parameters and running statistics cast down,
    torch's batch_norm in float16, the updated statistics and the output cast back), while the
    observations stay float32 and the taps record what the module was given.

    Expected: "implementation deviates", this runner the deviating side: float16 rounding (~1e-3
    relative) is far beyond float32's tolerance and float32's rounding floor, against which its
    float32 observations are measured; never "precision" and never an agreement within floors.
    Only for float32 cases."""

    name = "inject-float16"
    expected = IMPLEMENTATION

    def applies(self, case):
        return case.bn.dtype == "float32"

    def parts_running_stats(self, case):
        return bn_trains(case)  # the float16 update rounds the running statistics

    def alter(self, model, case):
        def make(bn, original):
            def forward(x):
                half = lambda t: None if t is None else t.to(torch.float16)  # noqa: E731
                running = half(bn.running_mean), half(bn.running_var)
                training = bn.training or (bn.running_mean is None and bn.running_var is None)
                updates = bn.training and bn.track_running_stats
                with torch.no_grad():
                    if updates:
                        bn.num_batches_tracked.add_(1)
                    output = F.batch_norm(
                        half(x),
                        running[0] if not training or updates else None,
                        running[1] if not training or updates else None,
                        half(bn.weight),
                        half(bn.bias),
                        training,
                        bn.momentum,
                        bn.eps,
                    )
                    if updates:
                        bn.running_mean.copy_(running[0])
                        bn.running_var.copy_(running[1])
                return output.to(x.dtype)

            return forward

        _wrap_forwards(model, case, make)


# 8 -------------------------------------------------------------------------------------------
class NanChannelRunner(InjectedRunner):
    """Each BatchNorm's output has NaN in channel 1 (the rest as torch computes it).

    Expected: "implementation deviates", this runner the deviating side (its error is NaN, which no
    tolerance admits). Running statistics are untouched; a model's output after the BatchNorm
    follows from the BatchNorm's own output at the same step."""

    name = "inject-nan"
    expected = IMPLEMENTATION

    def alter(self, model, case):
        def make(bn, original):
            def forward(x):
                output = original(x).clone()
                output[:, NAN_CHANNEL] = math.nan
                return output

            return forward

        _wrap_forwards(model, case, make)


INJECTED_RUNNERS: tuple[type[InjectedRunner], ...] = (
    EpsRunner,
    MomentumRunner,
    BiasedVarianceRunner,
    StaleStatsRunner,
    ExportFlipsModeRunner,
    ExportStepsBuffersRunner,
    HalfArithmeticRunner,
    NanChannelRunner,
)
