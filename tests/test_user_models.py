"""A user's own torch model: the reference and its validation, the probe's discovery of every
BatchNorm, mode patterns and freeze_batchnorm, the generic Keras port's table, and the first
parting BatchNorm proved on a deviation injected into one BatchNorm of a user model."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from harness.core.errors import CaseError
from harness.core.user_models import expand_mode, matching_paths
from harness.load.schema import load_case, load_cases

MODELS = """\
import torch
from torch import nn


class Stage(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Chain(nn.Module):
    \"\"\"Three conv + BatchNorm stages, a, b and c, run in that order.\"\"\"

    def __init__(self, channels=3):
        super().__init__()
        self.a, self.b, self.c = Stage(channels), Stage(channels), Stage(channels)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


class FrozenBatchNorm2d(nn.Module):
    def __init__(self, n):
        super().__init__()
        for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((n,), value))
        self.eps = 1e-5

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return x * scale.reshape(1, -1, 1, 1) + (self.bias - self.running_mean * scale).reshape(1, -1, 1, 1)


class EveryKind(nn.Module):
    \"\"\"Each kind of BatchNorm the harness finds, and an InstanceNorm with running statistics it must not.\"\"\"

    def __init__(self):
        super().__init__()
        self.plain = nn.BatchNorm2d(3)
        self.lazy = nn.LazyBatchNorm2d()
        self.sync = nn.SyncBatchNorm(3)
        self.frozen = FrozenBatchNorm2d(3)
        self.instance = nn.InstanceNorm2d(3, track_running_stats=True)

    def forward(self, x):
        return self.instance(self.frozen(self.sync(self.lazy(self.plain(x)))))


class WithGelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.bn(x))


class Branching(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        if x.sum() > 0:
            return self.bn(x)
        return x


class NoBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)


class SharedNorm(nn.Module):
    # one BatchNorm applied twice in a forward

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.bn(x))


class SelfMadeNorm(nn.Module):
    # a normalisation of its own that updates running statistics in train mode: no torch BatchNorm

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(3))
        self.register_buffer("running_var", torch.ones(3))

    def forward(self, x):
        if self.training:
            self.running_mean.mul_(0.9).add_(0.1 * x.mean((0, 2, 3)))
        return x - self.running_mean.reshape(1, -1, 1, 1)


class UsesSelfMade(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = SelfMadeNorm()

    def forward(self, x):
        return self.norm(x)


class AuxHeadInTraining(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.bn(x)
        return (y, y.mean()) if self.training else y


class FrozenStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = FrozenBatchNorm2d(3)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return torch.relu(self.bn(self.stem(x)))


class LinearOnImages(nn.Module):
    # a Linear on the last axis of a 4-d tensor (torch's layout), then a BatchNorm2d over its channels
    def __init__(self):
        super().__init__()
        self.mix = nn.Linear(4, 4)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.mix(x))


def broken(**kwargs):
    raise ValueError("the checkpoint path is not set")


def not_a_module():
    return 42
"""


def case_text(model: str, *, mode: str = "mode: train", extra: str = "", steps: str = "steps: [forward]") -> str:
    return f"description: a user model\nmodel: {model}\n{mode}\ninput: {{shape: [2, 3, 4, 4]}}\n{steps}\n{extra}"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A repository (pyproject.toml at its root) with the models file and a cases folder."""
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'user-project'\n")
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "cases").mkdir()
    return tmp_path


def write(project: Path, text: str, name: str = "case.yaml") -> Path:
    path = project / "cases" / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(CaseError) as refused:
        load_cases(path, display_path="case.yaml")
    return [str(problem.render("case.yaml")) for problem in refused.value.problems]


# ---- patterns (no torch needed) ---------------------------------------------------------------

PATHS = ("", "stem", "stem.conv", "stem.bn", "layer1", "layer1.0", "layer1.0.bn1", "layer1.0.bn2", "layer1.0.downsample.1", "bn")


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**.bn*", ["stem.bn", "layer1.0.bn1", "layer1.0.bn2", "bn"]),
        ("layer1.*.bn1", ["layer1.0.bn1"]),
        ("layer1.**", ["layer1.0", "layer1.0.bn1", "layer1.0.bn2", "layer1.0.downsample.1"]),
        ("*", ["stem", "layer1", "bn"]),
        ("stem.bn", ["stem.bn"]),
        ("**.downsample.?", ["layer1.0.downsample.1"]),
        ("nothing.*", []),
    ],
)
def test_a_pattern_names_submodules_in_the_models_order(pattern, expected):
    assert matching_paths(pattern, PATHS) == expected


def test_patterns_become_one_train_call_per_submodule():
    assert expand_mode([("", True), ("**.bn*", False)], PATHS) == [
        ("", True),
        ("stem.bn", False),
        ("layer1.0.bn1", False),
        ("layer1.0.bn2", False),
        ("bn", False),
    ]


def test_a_pattern_works_on_a_model_of_the_table_too(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(
        "description: d\nmodel: nested_two_bn\nbn: {num_features: 2}\nmode: {'': train, '**.bn': eval}\n"
        "input: {shape: [2, 3, 4, 4]}\nsteps: [forward, {set_mode: {'*': eval}}]\n"
    )
    case = load_case(path)
    assert case.mode.assignments == (("", True), ("stem.bn", False), ("head.block.bn", False))
    assert case.steps[1].mode.assignments == (("stem", False), ("head", False))


def test_a_pattern_that_names_no_submodule_is_refused(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(
        "description: d\nmodel: conv_bn\nbn: {num_features: 2}\nmode: {'': train, '**.norm*': eval}\ninput: {shape: [2, 3, 4, 4]}\nsteps: [forward]\n"
    )
    (problem,) = problems(path)
    assert problem.startswith("case.yaml:4: mode.**.norm*: pattern '**.norm*' matches no submodule of model 'conv_bn'")
    assert "'conv', 'bn'" in problem


# ---- the reference, before any user code runs ------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{file: ../../elsewhere.py, factory: Net}", "model.file: '../../elsewhere.py' is outside the case's repository"),
        ("{file: missing.py, factory: Net}", "model.file: no file"),
        ("{file: ../models.py, factory: 'models:Chain'}", "model.factory: 'models:Chain' names a module, but model.file already says"),
        ("{factory: Chain}", "model.factory: 'Chain' names no module; allowed: package.module:factory"),
        ("{factory: 'not a name'}", "model.factory: 'not a name' does not match"),
        ("{file: ../models.txt, factory: Chain}", "model.file: '../models.txt' does not match"),
        ("{file: ../models.py, factory: Chain, colour: red}", "model.colour: unknown field; allowed: factory, file, kwargs"),
    ],
)
def test_a_bad_reference_is_refused_with_line_and_field(project, model, expected):
    (problem,) = problems(write(project, case_text(model)))
    assert problem.startswith("case.yaml:2: ") and expected in problem, problem


def test_the_users_code_never_runs_for_a_file_with_another_problem(project):
    """A models file that leaves a mark when imported: a case with a misspelt runner is refused
    without the model being built."""
    (project / "marking.py").write_text("import pathlib\npathlib.Path(__file__).with_name('imported').write_text('yes')\n" + MODELS)
    found = problems(write(project, case_text("{file: ../marking.py, factory: Chain}", extra="runners: [torch-eagre]\n")))
    assert len(found) == 1 and "runners[0]" in found[0]
    assert not (project / "imported").exists()


def test_a_table_models_fields_are_refused_for_a_user_model(project):
    found = problems(
        write(
            project,
            case_text("{file: ../models.py, factory: Chain}", extra="bn: {num_features: 3, eps: 0.001}\nmodel_options: {bias: false}\n"),
        )
    )
    assert any("bn.num_features: a user model's BatchNorms keep what its code gives them" in problem for problem in found)
    assert any("model_options: model_options change the model table's models, not a user model" in problem for problem in found)


def test_a_name_outside_the_table_says_how_to_name_ones_own_model(project):
    found = problems(write(project, case_text("my_net.py:MyNet", extra="bn: {num_features: 3}\n")))
    assert found == [
        "case.yaml:2: model: 'my_net.py:MyNet' is not allowed; allowed: batchnorm1d, batchnorm2d, batchnorm3d, conv_bn, forum_net, "
        "nested_two_bn, linear_bn, depthwise_conv_bn, residual_block, or a model of your own: {file: models.py, factory: MyNet} "
        "or {factory: 'package.module:build'}"
    ]


def test_bn_is_required_for_a_model_of_the_table_only(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text("description: d\nmodel: conv_bn\nmode: train\ninput: {shape: [2, 3, 4, 4]}\nsteps: [forward]\n")
    (problem,) = problems(path)
    assert (
        problem
        == "case.yaml:1: <document>: missing required field 'bn'; allowed: bn, for a model of the table (a user model's BatchNorms have their own)"
    )


# ---- the probe: it builds the model, in a child process ---------------------------------------

requires_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")


def probe(test):
    """A test that builds a user model: the probe is a child process that imports torch."""
    return pytest.mark.slow(requires_torch(test))


@probe
def test_every_kind_of_batchnorm_is_found_and_instance_norm_is_not(project):
    case = load_case(write(project, case_text("{file: ../models.py, factory: EveryKind}")))
    assert case.model == "models.py:EveryKind"
    assert case.model_spec.batchnorm_paths == ("plain", "lazy", "sync", "frozen")
    facts = {entry.path: entry for entry in case.structure.batchnorms}
    # A lazy BatchNorm takes its shape, and becomes a BatchNorm2d, at its first forward (in eval: no statistic moves).
    assert facts["lazy"].num_features == 3 and facts["lazy"].class_name == "BatchNorm2d"
    assert facts["frozen"].frozen and facts["frozen"].momentum is None and not facts["plain"].frozen
    assert case.structure.output_shape == (2, 3, 4, 4)


@probe
def test_a_factory_from_a_package_of_the_repository(project):
    package = project / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(MODELS)
    case = load_case(write(project, case_text("{factory: 'mypkg.nets:Chain', kwargs: {channels: 3}}")))
    assert case.model == "mypkg.nets:Chain" and case.model_spec.batchnorm_paths == ("a.bn", "b.bn", "c.bn")
    assert case.user_model.kwargs == {"channels": 3}


@probe
def test_mode_patterns_and_freeze_batchnorm_on_a_user_model(project):
    case = load_case(write(project, case_text("{file: ../models.py, factory: Chain}", mode="mode: {'': train, '**.bn': eval}")))
    assert case.mode.assignments == (("", True), ("a.bn", False), ("b.bn", False), ("c.bn", False))
    frozen = load_case(write(project, case_text("{file: ../models.py, factory: Chain}", mode="freeze_batchnorm: true"), "frozen.yaml"))
    assert frozen.mode.assignments == (("", True), ("a.bn", False), ("b.bn", False), ("c.bn", False))


@probe
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("{file: ../models.py, factory: broken}", "ValueError: the checkpoint path is not set"),
        ("{file: ../models.py, factory: not_a_module}", "not_a_module(...) returned int, not a torch.nn.Module"),
        ("{file: ../models.py, factory: Missing}", "AttributeError"),
        ("{file: ../models.py, factory: Chain, kwargs: {width: 3}}", "TypeError"),
        ("{file: ../models.py, factory: NoBatchNorm}", "no BatchNorm in the model (its modules: NoBatchNorm, Conv2d)"),
    ],
)
@probe
def test_a_factory_that_fails_is_the_cases_error_at_its_model_line(project, model, expected):
    (problem,) = problems(write(project, case_text(model)))
    assert problem.startswith("case.yaml:2: model: ") and expected in problem, problem


@probe
@probe
@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        ("SharedNorm", "a BatchNorm runs more than once in one forward: bn (2 calls)"),
        ("UsesSelfMade", "norm: no torch BatchNorm, yet its forward in train mode updates running_mean"),
        ("AuxHeadInTraining", "in train mode the model returns tuple"),
    ],
)
def test_what_the_harness_cannot_judge_is_refused_at_the_model_line(project, factory, expected):
    (problem,) = problems(write(project, case_text(f"{{file: ../models.py, factory: {factory}}}")))
    assert problem.startswith("case.yaml:2: model: ") and expected in problem, problem


def test_kwargs_that_json_cannot_carry_are_refused_with_their_field(project):
    (problem,) = problems(write(project, case_text("{file: ../models.py, factory: Chain, kwargs: {when: 2020-01-01}}")))
    assert problem.startswith("case.yaml:2: model.kwargs.when: a date JSON cannot carry; allowed: numbers, strings"), problem
    found = problems(write(project, case_text("{file: ../models.py, factory: Chain, kwargs: {sizes: [1, !!binary aGk=]}}"), "b.yaml"))
    assert found == [
        "case.yaml:2: model.kwargs.sizes[1]: a bytes JSON cannot carry; allowed: numbers, strings, booleans, null, lists and "
        "mappings with text keys (the factory's keyword arguments)"
    ]


@probe
def test_a_frozen_batchnorm_has_no_reset_and_is_never_reset(project):
    """Naming one in reset_running_stats is refused; a reset of every BatchNorm leaves it alone,
    in torch and in the Keras graph port, which agree."""
    (problem,) = problems(
        write(project, case_text("{file: ../models.py, factory: FrozenStem}", steps="steps: [{reset_running_stats: [stem]}]"))
    )
    assert "steps[0].reset_running_stats[0]: 'stem' is a frozen BatchNorm: it has no reset_running_stats()" in problem
    from harness.frontends.session import run_case

    pytest.importorskip("keras")
    text = case_text(
        "{file: ../models.py, factory: FrozenStem}",
        extra="keras: {running_var: unbiased}\n",
        steps="steps: [train_step, reset_running_stats, train_step]",
    )
    case = load_case(write(project, text, "reset.yaml"))
    result = run_case(case, only=["torch-eager", "keras-tensorflow"])
    assert [run.status for run in result.runs] == ["ok", "ok"], [run.reason for run in result.runs]
    assert not [verdict.text for verdict in result.verdicts if not verdict]
    assert any(verdict.field == "bn.running_var" and verdict.step == 2 for verdict in result.verdicts)


def test_the_port_table_refuses_what_keras_cannot_build():
    from harness.core.keras_port_table import first_unportable
    from harness.core.user_models import BatchNormFacts, ModelStructure

    def structure(conv: dict, called: bool = True) -> ModelStructure:
        graph = [{"name": "x", "op": "placeholder", "target": "x", "args": [], "kwargs": {}}]
        graph += [{"name": "conv", "op": "call_module", "target": "conv", "args": [{"node": "x"}], "kwargs": {}}]
        if called:
            graph += [{"name": "bn", "op": "call_module", "target": "bn", "args": [{"node": "conv"}], "kwargs": {}}]
        graph += [{"name": "output", "op": "output", "target": "output", "args": [{"node": "bn" if called else "conv"}], "kwargs": {}}]
        facts = {"in_channels": 3, "out_channels": 3, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1]}
        facts |= {"groups": 1, "padding_mode": "zeros", "bias": True} | conv
        return ModelStructure.from_json(
            {
                "modules": [["", "Net"], ["conv", "Conv3d" if len(facts["kernel_size"]) == 3 else "Conv2d"], ["bn", "BatchNorm2d"]],
                "batchnorms": [dataclasses.asdict(BatchNormFacts("bn", "BatchNorm2d", 3, 1e-5, 0.1, True, True))],
                "output_shape": [2, 3, 4, 4],
                "graph": graph,
                "leaf_modules": [["conv", facts]],
            }
        )

    assert first_unportable(structure({})) is None
    assert (
        first_unportable(structure({"groups": 3, "kernel_size": [3, 3, 3]}))
        == "module 'conv' (Conv3d): a depthwise Conv3d (Keras has no DepthwiseConv3D)"
    )
    assert "stride=[2, 2] with dilation=[2, 2]" in first_unportable(structure({"stride": [2, 2], "dilation": [2, 2]}))
    assert first_unportable(structure({}, called=False)) == "the BatchNorm 'bn' is never called in the traced forward"


def test_a_forward_that_fails_on_the_input_is_refused(project):
    text = case_text("{file: ../models.py, factory: Chain}").replace("[2, 3, 4, 4]", "[2, 5, 4, 4]")
    (problem,) = problems(write(project, text))
    assert "a forward of a 2x5x4x4 float32 input failed" in problem and "RuntimeError" in problem


@probe
def test_paths_of_a_user_model_are_checked_against_what_the_probe_found(project):
    text = case_text(
        "{file: ../models.py, factory: Chain}",
        extra="bn_by_path: {a.bn: {eps: 0.001}, z.bn: {eps: 0.001}}\nexpect:\n  - field: q.bn.output\n    runners: [onnx-dynamo-ort]\n    reason: r\n",
        steps="steps: [forward, {set_state: {b.bn: {running_mean: [0, 0]}}}]",
    )
    found = problems(write(project, text))
    assert any("bn_by_path.z.bn: no BatchNorm 'z.bn' in model 'models.py:Chain'" in problem for problem in found)
    assert any("running_mean: 2 values for num_features=3" in problem for problem in found)
    assert any("'q.bn.output' matches no field of model 'models.py:Chain'" in problem for problem in found)


# ---- the Keras port's table -------------------------------------------------------------------


@probe
def test_the_keras_port_names_the_first_module_it_cannot_map(project):
    from harness.core.keras_port_table import first_unportable

    gelu = load_case(write(project, case_text("{file: ../models.py, factory: WithGelu}")))
    assert first_unportable(gelu.structure) == "module 'act' (GELU) has no Keras counterpart in the port's table"
    branching = load_case(write(project, case_text("{file: ../models.py, factory: Branching}"), "branching.yaml"))
    assert first_unportable(branching.structure).startswith("torch.fx cannot trace it (TraceError")
    chain = load_case(write(project, case_text("{file: ../models.py, factory: Chain}"), "chain.yaml"))
    assert first_unportable(chain.structure) is None
    assert chain.batchnorm_order == ("a.bn", "b.bn", "c.bn")


def test_every_entry_of_the_port_table_has_a_counterpart_in_the_port():
    """One table: what `first_unportable` lets through, the graph port builds."""
    import inspect

    from harness.core.keras_port_table import PORTABLE_FUNCTIONS, PORTABLE_METHODS, PORTABLE_MODULES
    from harness.run.runners import keras_graph_port

    source = inspect.getsource(keras_graph_port)
    for name in PORTABLE_MODULES:
        assert f'"{name}"' in source or name.startswith(("Conv", "MaxPool", "AvgPool", "Adaptive")), name
    for target in [*PORTABLE_FUNCTIONS, *PORTABLE_METHODS]:
        assert f'"{target.rsplit(".", 1)[-1]}"' in source, target


# ---- the first parting BatchNorm, on a deviation of known cause --------------------------------


@probe
def test_the_first_parting_batchnorm_is_the_one_a_deviation_was_injected_into(project):
    """One BatchNorm (b.bn, the second of three a forward runs) returns its output scaled by 1.5 in
    the injected runner: that BatchNorm is named where the runner first parts, at the first step;
    a.bn, before it, agrees; c.bn, after it, diverges but is not named."""
    from harness.judge.engine import judge
    from harness.run.runners.torch_eager import TorchEagerRunner
    from tests.known_cause_runners import InjectedRunner

    class ScaledOutput(InjectedRunner):
        name = "inject-scaled-b-bn"
        expected = "implementation deviates"

        def alter(self, model, case):
            bn = model.get_submodule("b.bn")
            original = bn.forward
            bn.forward = lambda x: original(x) * 1.5

    case = load_case(write(project, case_text("{file: ../models.py, factory: Chain}", steps="steps: [train_step, forward]")))
    result = judge(case, (TorchEagerRunner().run(case), ScaledOutput().run(case)))
    (parting,) = result.first_parting
    assert (parting.runner, parting.batchnorm, parting.step, parting.field) == ("inject-scaled-b-bn", "b.bn", 0, "b.bn.output")
    divergent = {verdict.field for verdict in result.verdicts if not verdict and verdict.step == 0}
    assert "a.bn.output" not in divergent and {"b.bn.output", "c.bn.output", "output"} <= divergent
    assert "First parting BatchNorm: b.bn in inject-scaled-b-bn, after step 0 (train_step): b.bn.output" in result.explain()
    b_output = next(verdict for verdict in result.verdicts if verdict.field == "b.bn.output" and verdict.step == 0)
    assert b_output.attribution == "implementation deviates"


def test_the_first_parting_batchnorm_is_recorded_and_reported():
    """results.json keeps it (written and read back) and the report's case section leads with it."""
    from harness.core.records import CaseRecord, PartingRecord, ResultsDocument
    from harness.report.render import render_report

    parting = (
        PartingRecord("keras-tensorflow", "layer1.bn1", 3, "step 3 (forward)", "layer1.bn1.output"),
        PartingRecord("keras-torch", "layer1.bn1", 3, "step 3 (forward)", "layer1.bn1.output"),
    )
    record = CaseRecord("net", "cases/net.yaml", "failed", "a user model", ("step 0 (forward)",), judged=True, first_parting=parting)
    assert CaseRecord.from_json(record.to_json()).first_parting == parting
    html = render_report(ResultsDocument((record,)))
    assert (
        '<p class="parting"><b>First parting BatchNorm:</b> layer1.bn1 in keras-tensorflow, keras-torch, '
        "after step 3 (forward): layer1.bn1.output</p>"
    ) in html


@probe  # ... and the frameworks in worker pools, and the script in a subprocess
def test_a_repro_bundle_of_a_user_model_imports_the_users_file_and_shows_the_divergence(project):
    """The script builds the user's model from its file, as the runners do, and shows the
    TorchScript exporter putting the frozen BatchNorms back in train mode; a Keras bundle carries
    the graph port and agrees, as the runner does."""
    import subprocess
    import sys

    from harness.core.errors import HarnessError
    from harness.frontends.session import run_case
    from harness.report.repro import write_bundle

    pytest.importorskip("onnxruntime")
    text = case_text("{file: ../models.py, factory: Chain}", mode="freeze_batchnorm: true", steps="steps: [forward, export, forward]")
    case = load_case(write(project, text))
    result = run_case(case, only=["torch-eager", "onnx-torchscript-ort"])
    bundle = write_bundle(case, result, "onnx-torchscript-ort", project / "repro")
    assert not any(line.startswith(("import harness", "from harness")) for line in (bundle / "repro.py").read_text().splitlines())
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=bundle, capture_output=True, text=True, timeout=300)
    assert "DIVERGES: module.a.bn.training after step 1 (export(training=eval)): torch-eager False, here True" in run.stdout, (
        run.stdout + run.stderr
    )
    pytest.importorskip("keras")
    keras_bundle = write_bundle(case, result, "keras-tensorflow", project / "repro")
    run = subprocess.run([sys.executable, "-I", "repro.py"], cwd=keras_bundle, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "0 divergence(s) shown" in run.stdout, run.stdout + run.stderr
    unportable = load_case(write(project, case_text("{file: ../models.py, factory: WithGelu}"), "gelu.yaml"))
    with pytest.raises(HarnessError, match="no repro bundle for keras-tensorflow: no Keras port: module 'act' \\(GELU\\)"):
        write_bundle(unportable, result, "keras-tensorflow", project / "repro")


@probe
def test_the_batchnorms_run_in_the_traced_forwards_order():
    """TinyResNet registers layer2's downsample BatchNorm after layer2.bn2 but runs it first: the
    first parting and the attribution read the BatchNorms in the order the forward runs them."""
    from harness.load.schema import load_case as load

    case = load(Path(__file__).resolve().parents[1] / "cases" / "20_user_models" / "resnet_exported_in_eval.yaml")
    registered, run = case.model_spec.batchnorm_paths, case.batchnorm_order
    assert registered.index("layer2.downsample.1") > registered.index("layer2.bn1")
    assert run.index("layer2.downsample.1") < run.index("layer2.bn1") and set(run) == set(registered)


def test_without_torch_a_user_model_case_says_how_to_install_it(project, monkeypatch):
    from harness.load import user_model

    real = importlib.util.find_spec
    monkeypatch.setattr(user_model.importlib.util, "find_spec", lambda name, *rest: None if name == "torch" else real(name, *rest))
    user_model._probe.cache_clear()
    (problem,) = problems(write(project, case_text("{file: ../models.py, factory: Chain}", extra="model_seed: 99\n")))
    assert (
        problem.startswith("case.yaml:2: model: the model could not be built and run:\ntorch is not installed")
        and "pip install torch==2.13.0" in problem
    )


@probe
def test_the_keras_port_takes_channels_last_again_after_a_layer_in_torchs_layout(project):
    """A Linear on a 4-d tensor runs in torch's layout; the BatchNorm2d after it must see the
    channels again, so the port agrees with torch in train and in eval."""
    from harness.frontends.session import run_case

    pytest.importorskip("keras")
    text = case_text(
        "{file: ../models.py, factory: LinearOnImages}",
        extra="keras: {running_var: unbiased}\n",
        steps="steps: [train_step, {set_mode: eval}, forward]",
    )
    result = run_case(load_case(write(project, text)), only=["torch-eager", "keras-tensorflow"])
    assert [run.status for run in result.runs] == ["ok", "ok"], [run.reason for run in result.runs]
    compared = {verdict.field for verdict in result.verdicts}
    assert {"output", "bn.running_mean", "bn.running_var"} <= compared
    assert not [verdict.text for verdict in result.verdicts if not verdict and verdict.step == 0]


@probe
def test_a_grid_over_user_models_names_each_point_by_its_factory(project):
    text = case_text("{file: ../models.py, factory: Chain}", mode="mode: eval")
    text += "grid:\n  model: [{file: ../models.py, factory: Chain}, {file: ../models.py, factory: Chain, kwargs: {channels: 3}}]\n"
    cases = load_cases(write(project, text, "grid.yaml"))
    assert [case.case_id for case in cases] == ["grid[model_Chain]", "grid[model_Chain+channels_3]"]
    assert [case.user_model.kwargs for case in cases] == [{}, {"channels": 3}]
