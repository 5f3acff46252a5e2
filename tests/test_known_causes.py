"""The bench that proves attribution right: deviations of known cause.

Each runner of tests/known_cause_runners.py injects ONE known deviation into an otherwise faithful
torch-eager run. Both run in-process on the same case, `harness.judge.engine.judge` compares them, and
every divergence must get the class the deviation's cause defines, with the injected runner named
as the deviating side (or as the runner a step changed).

Which divergences count, and how (a divergence is a verdict of the pair that is not close):
- at the steps where the deviation acts (`acting_steps`: the forwards, the train steps, or the
  export step): every divergence, in every field, must have the expected class; there must be at
  least one. These are the deviation's own fields (an output, a running statistic, a mode flag)
  and what the same step computes from them (a model's output after the BatchNorm).
- at the other steps: divergences that carry state the deviation left (running statistics parted
  at a train step, seen again at the export and at the later forward). They too must have the
  expected class: the harness's own rule is that a divergence whose cause lies at an earlier step
  takes that cause's class ("follows from ..."). Tested separately, so that a harness fault in
  carrying a cause does not hide whether the cause itself is attributed right.
- the module's BatchNorm parameters (`module.<bn>.eps`, `module.<bn>.momentum`): they differ only
  where the injected deviation IS that parameter; tested separately, expected "conventions differ".
No divergence of the pair may be an agreement within rounding floors: everything not injected is
computed by the same torch code as the reference, and every injected deviation is far beyond the
floors (float16 arithmetic in a float32 case included).

The bench found two faults when it was written, both fixed: a divergence carried unchanged
through an export was blamed on the step where it began ('step 0 (forward) changed ...'), and a
BatchNorm parameter set otherwise was 'unattributed'.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("torch")

from harness.core.fields import MODULE, MODULE_BN_ATTRIBUTES  # noqa: E402
from harness.judge.attribution import CLASSES, ROUNDING_FLOOR_FACTOR  # noqa: E402
from harness.judge.engine import judge  # noqa: E402
from harness.load.schema import load_case  # noqa: E402
from harness.run.runners.torch_eager import TorchEagerRunner  # noqa: E402
from tests.known_cause_runners import (  # noqa: E402
    CONVENTIONS,
    IMPLEMENTATION,
    INJECTED_EPS,
    INJECTED_RUNNERS,
    STATE,
    EpsRunner,
    InjectedRunner,
    MomentumRunner,
)
from tests.tiny_cases import write_case  # noqa: E402

REFERENCE = TorchEagerRunner.name
# Non-trivial initial values: a fresh module (ones, zeros) would hide a swapped weight or statistic.
CASE_TEMPLATE = """\
description: a deviation of known cause, injected into a faithful torch run
model: {model}
bn:
  num_features: 3
  weight: [1.5, 0.5, -0.8]
  bias: [0.2, -0.3, 0.1]
  running_mean: [0.5, -0.25, 0.1]
  running_var: [2.0, 0.5, 1.5]
  dtype: {dtype}
mode: {mode}
input:
  shape: {shape}
  seed: 3
steps:
  - forward
  - train_step
  - export
  - forward
"""


@dataclass(frozen=True)
class Config:
    model: str
    shape: tuple[int, ...]
    mode: str
    dtype: str

    @property
    def id(self) -> str:
        mode = {'{"": train, bn: eval}': "train-bn_eval", '{"": eval, bn: train}': "eval-bn_train"}.get(self.mode, self.mode)
        return f"{self.model}{list(self.shape)}-{mode}-{self.dtype}".replace(" ", "")

    def text(self) -> str:
        return CASE_TEMPLATE.format(model=self.model, shape=list(self.shape), mode=self.mode, dtype=self.dtype)


CONFIGS = tuple(
    Config(model, shape, mode, dtype)
    for model, shape in (
        ("batchnorm1d", (8, 3)),
        ("batchnorm1d", (8, 3, 5)),
        ("batchnorm2d", (4, 3, 3, 3)),
        ("batchnorm3d", (2, 3, 2, 2, 2)),
    )
    for mode in ("train", "eval")
    for dtype in ("float32", "float64")
) + tuple(
    Config("forum_net", (2, 3, 4, 4), mode, dtype)
    for mode in ('{"": train, bn: eval}', '{"": eval, bn: train}')
    for dtype in ("float32", "float64")
)

_cases: dict[Config, object] = {}
_runs: dict[tuple[str, Config], object] = {}


def case_of(config: Config):
    """The configuration's case, loaded from its file as any case is (once; also at collection,
    where `applies` reads its model, mode and dtype). The file is not read again after loading."""
    if config not in _cases:
        with tempfile.TemporaryDirectory() as directory:
            _cases[config] = load_case(write_case(Path(directory), f"known_cause_{len(_cases)}", config.text()))
    return _cases[config]


def run_of(runner_class, config: Config):
    """One run per runner and configuration, shared by the tests (torch-eager's by all runners)."""
    key = (runner_class.name, config)
    if key not in _runs:
        _runs[key] = runner_class().run(case_of(config))
    return _runs[key]


def _applicable(runner_class) -> list[Config]:
    return [config for config in CONFIGS if runner_class().applies(case_of(config))]


def _params(test: str) -> list:
    params = []
    for runner_class in INJECTED_RUNNERS:
        if test == "parameters" and runner_class not in (EpsRunner, MomentumRunner):
            continue
        for config in _applicable(runner_class):
            params.append(pytest.param(runner_class, config, id=f"{runner_class.name}-{config.id}"))
    return params


def judged(runner_class, config: Config):
    """The case, the injected runner, and every verdict of torch-eager vs the injected runner."""
    case = case_of(config)
    reference, injected = run_of(TorchEagerRunner, config), run_of(runner_class, config)
    assert reference.status == "ok", reference.reason
    assert injected.status == "ok", injected.reason
    result = judge(case, (reference, injected))
    assert result.outcome in ("passed", "failed"), f"the judgement itself failed: {result.outcome}: {result.error}"
    assert all(verdict.other == runner_class.name for verdict in result.verdicts)
    return case, runner_class(), result.verdicts


def is_parameter(field: str) -> bool:
    """`module.<bn>.eps` / `module.<bn>.momentum` / ...: a BatchNorm's configuration, no computed value."""
    return field.startswith(MODULE + ".") and field.rsplit(".", 1)[-1] in MODULE_BN_ATTRIBUTES


def deviates(side: dict) -> bool:
    """Beyond its own spec (as SideCheck.within_spec, negated): a NaN error deviates too."""
    return not side["error"] <= max(side["allowed"], ROUNDING_FLOOR_FACTOR * side["floor"])


def describe(verdicts) -> str:
    return "\n".join(f"  {v.field} after {v.step_label}: {v.attribution}: {v.attribution_text}" for v in verdicts)


def check_attributed(verdict, case, runner: InjectedRunner) -> None:
    """The expected class, with the evidence that class rests on."""
    where = f"{verdict.field} after {verdict.step_label}"
    assert verdict.attribution in CLASSES, where
    assert verdict.attribution == runner.expected, f"{where}: {verdict.attribution}: {verdict.attribution_text}"
    sides = {side["runner"]: side for side in verdict.attribution_sides}
    if runner.expected == IMPLEMENTATION:
        assert runner.name in sides and deviates(sides[runner.name]), f"{where}: {verdict.attribution_text}"
        assert REFERENCE not in sides or not deviates(sides[REFERENCE]), f"{where}: {verdict.attribution_text}"
        assert f"{runner.name} vs " in verdict.attribution_text
    elif runner.expected == CONVENTIONS:
        assert set(sides) == {REFERENCE, runner.name}, f"{where}: both sides are measured"
        assert not any(deviates(side) for side in sides.values()), f"{where}: both follow their specs"
        assert f"{REFERENCE} follows" in verdict.attribution_text and f"{runner.name} follows" in verdict.attribution_text
    else:
        assert runner.expected == STATE
        steps = [case.step_label(index) for index in sorted(runner.acting_steps(case))]
        assert any(step in verdict.attribution_text for step in steps), f"{where} names none of {steps}: {verdict.attribution_text}"
        assert f"in {runner.name}" in verdict.attribution_text, f"{where}: {verdict.attribution_text}"


@pytest.mark.parametrize(("runner_class", "config"), _params("direct"))
def test_the_deviation_is_attributed_to_its_cause_where_it_acts(runner_class, config):
    case, runner, verdicts = judged(runner_class, config)
    assert not [v for v in verdicts if v.rounding_floor is not None], "no agreement within rounding floors"
    acting = runner.acting_steps(case)
    divergent = [v for v in verdicts if not v and v.step in acting and not is_parameter(v.field)]
    assert divergent, f"{runner.name} shows no divergence at steps {sorted(acting)}"
    for verdict in divergent:
        check_attributed(verdict, case, runner)
    parameters = {v.field.rsplit(".", 1)[-1] for v in verdicts if not v and is_parameter(v.field)}
    assert parameters == ({runner.parameter} if runner.parameter else set())
    if runner_class is EpsRunner:
        assert all(f"eps={INJECTED_EPS:g}" in v.attribution_text for v in divergent)
    if runner_class is MomentumRunner:
        assert all("momentum=0.9" in v.attribution_text for v in divergent)


@pytest.mark.parametrize(("runner_class", "config"), _params("carried"))
def test_what_the_deviation_leaves_behind_keeps_its_cause(runner_class, config):
    case, runner, verdicts = judged(runner_class, config)
    acting = runner.acting_steps(case)
    carried = [v for v in verdicts if not v and v.step not in acting and not is_parameter(v.field)]
    wrong = [v for v in carried if v.attribution != runner.expected]
    assert not wrong, f"{len(wrong)} of {len(carried)} carried divergences misattributed:\n{describe(wrong)}"
    for verdict in carried:
        check_attributed(verdict, case, runner)
    if runner.parts_running_stats(case):
        assert carried, "the parted running statistics show at the later steps"


@pytest.mark.parametrize(("runner_class", "config"), _params("parameters"))
def test_a_parameter_set_otherwise_is_a_convention(runner_class, config):
    case, runner, verdicts = judged(runner_class, config)
    parameters = [v for v in verdicts if not v and is_parameter(v.field)]
    assert parameters and all(v.field.endswith("." + runner.parameter) for v in parameters)
    wrong = [v for v in parameters if v.attribution != CONVENTIONS]
    assert not wrong, f"{len(wrong)} of {len(parameters)} misattributed:\n{describe(wrong)}"


def test_every_deviation_is_exercised_and_the_configurations_cover_the_brief():
    assert len(INJECTED_RUNNERS) == 8
    assert len({runner.name for runner in INJECTED_RUNNERS}) == 8
    for runner_class in INJECTED_RUNNERS:
        assert runner_class.expected in CLASSES and runner_class.__doc__ and "Expected:" in runner_class.__doc__
        assert _applicable(runner_class), runner_class.name
