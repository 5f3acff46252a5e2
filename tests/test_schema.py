from __future__ import annotations

import pytest

from harness.core.errors import CaseError
from harness.core.runner_table import graph_runner_names, runner_names
from harness.load.build import MAX_INPUT_ELEMENTS
from harness.load.schema import load_case
from harness.load.schemas import case_schema, graph_case_schema, schema_registry, shared_schema
from tests.tiny_cases import EVAL_BN2D, FORUM_FLIP, FORUM_FLIP_EXPECT, write_case


def load_text(tmp_path, text: str):
    return load_case(write_case(tmp_path, "case", text), display_path="cases/case.yaml")


def problems(tmp_path, text: str) -> list[str]:
    with pytest.raises(CaseError) as caught:
        load_text(tmp_path, text)
    return str(caught.value).splitlines()


def refused(tmp_path, text: str) -> list:
    """Every problem of `text` (the case file it is written to is refused)."""
    with pytest.raises(CaseError) as caught:
        load_text(tmp_path, text)
    return list(caught.value.problems)


def located(tmp_path, text: str) -> list[tuple]:
    """(line, field, message) of every problem of `text`."""
    return [(problem.line, problem.field, problem.message) for problem in refused(tmp_path, text)]


def test_a_valid_case_builds_the_domain_model(tmp_path):
    case = load_text(tmp_path, FORUM_FLIP + FORUM_FLIP_EXPECT)
    assert case.case_id == "case" and case.model == "forum_net"
    assert case.bn.running_mean == (0.5, -0.25) and case.bn.momentum == 0.1 and case.bn.dtype == "float32"
    assert case.input.dtype == "float32", "the input dtype defaults to the BN dtype"
    assert case.mode.assignments == (("", True), ("bn", False))
    assert [step.label() for step in case.steps] == ["forward", "export(training=eval)", "forward"]
    first, second = case.expectations
    assert first.fields == ("module.bn.training",) and first.steps == (1, 2) and first.line == 15
    assert second.fields[1] == "module.bn.running_*" and second.steps == (2,)


def test_modes_are_applied_parents_first_whatever_the_written_order(tmp_path):
    text = FORUM_FLIP.replace('mode: {"": train, bn: eval}', 'mode: {bn: eval, "": train}')
    assert load_text(tmp_path, text).mode.assignments == (("", True), ("bn", False))


def test_train_step_repeat_expands_with_a_fresh_seed_per_step(tmp_path):
    text = EVAL_BN2D.replace("  - forward\n  - export\n  - forward\n", "  - forward\n  - train_step: {repeat: 3}\n  - set_mode: train\n")
    case = load_text(tmp_path, text)
    assert [step.kind for step in case.steps] == ["forward", "train_step", "train_step", "train_step", "set_mode"]
    assert [step.seed for step in case.steps[:4]] == [1, 3, 4, 5]
    assert case.steps[4].mode.assignments == (("", True),)


def test_every_schema_problem_is_reported_at_once_with_line_and_allowed_values(tmp_path):
    text = FORUM_FLIP.replace("bn: eval}", "bn: evaluate}").replace("  - export\n", "  - explode\n  - export: {opsett: 12}\n")
    text = text.replace("input:\n", "colour: red\ninput:\n")
    assert problems(tmp_path, text) == [
        "cases/case.yaml:7: mode.bn: 'evaluate' is not allowed (did you mean 'eval'?); allowed: train, eval",
        "cases/case.yaml:8: colour: unknown field; allowed: description, model, freeze_batchnorm, model_options, model_seed, bn, bn_by_path, mode, input, "
        "steps, expect, tolerance, runners, timeout, torch_memory_format, keras",
        "cases/case.yaml:13: steps[1]: 'explode' is not allowed; allowed: forward, export, train_step, reset_running_stats, "
        "or a mapping with one key of: forward, train_step, export, set_mode, set_state, reset_running_stats",
        "cases/case.yaml:14: steps[2].export.opsett: unknown field (did you mean 'opset'?); allowed: training, opset, dynamic_batch, constant_folding, graph_state, keep_initializers_as_inputs, "
        "input_names, output_names, export_params, external_data",
    ]


def test_unknown_model_lists_the_registry(tmp_path):
    (problem,) = problems(tmp_path, EVAL_BN2D.replace("model: batchnorm2d", "model: resnet"))
    assert problem == (
        "cases/case.yaml:2: model: 'resnet' is not allowed; allowed: batchnorm1d, batchnorm2d, batchnorm3d, "
        "conv_bn, forum_net, nested_two_bn, linear_bn, depthwise_conv_bn, residual_block, "
        "or a model of your own: {file: models.py, factory: MyNet} or {factory: 'package.module:build'}"
    )


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("num_features: 2", "num_features: two", "bn.num_features: got a string 'two'; allowed: an integer"),
        ("num_features: 2", "num_features: 0", "bn.num_features: got 0; allowed: >= 1"),
        ("  seed: 1\n", "  seed: 1\n  shape: [2, 2, 3, 3]\n", "input.shape: duplicate key"),
        (
            "description: a tiny eval-mode BatchNorm2d\n",
            "",
            "<document>: missing required field 'description'; allowed: description, model, input, steps",
        ),
    ],
)
def test_single_field_problems(tmp_path, old, new, expected):
    assert [problem.split(": ", 1)[1] for problem in problems(tmp_path, EVAL_BN2D.replace(old, new))] == [expected]


@pytest.mark.parametrize(
    "export, expected",
    [
        ("{input_names: [a, b]}", "steps[1].export.input_names: got 2 items; allowed: at most 1 items"),
        ("{output_names: []}", "steps[1].export.output_names: got 0 items; allowed: at least 1 items"),
        ("{export_params: maybe}", "steps[1].export.export_params: got a string 'maybe'; allowed: true or false"),
        ("{external_data: 1}", "steps[1].export.external_data: got an integer 1; allowed: true or false"),
    ],
)
def test_export_options_are_checked(tmp_path, export, expected):
    assert [problem.split(": ", 1)[1] for problem in problems(tmp_path, EVAL_BN2D.replace("  - export\n", f"  - export: {export}\n"))] == [
        expected
    ]


def test_export_options_build_the_steps_label_and_names(tmp_path):
    path = tmp_path / "case.yaml"
    path.write_text(
        EVAL_BN2D.replace(
            "  - export\n", "  - export: {input_names: [images], output_names: [logits], export_params: false, external_data: true}\n"
        )
    )
    step = load_case(path).steps[1]
    assert (step.export.input_name, step.export.output_name, step.export.export_params, step.export.external_data) == (
        "images",
        "logits",
        False,
        True,
    )
    assert step.label() == "export(training=eval, export_params=False, external_data=True)"


def test_shape_must_match_num_features_for_a_bare_batchnorm(tmp_path):
    (problem,) = problems(tmp_path, EVAL_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [2, 3, 3, 3]"))
    assert problem == "cases/case.yaml:9: input.shape[1]: 3 channels but bn.num_features is 2; allowed: 2"


def test_input_rank_must_fit_the_model(tmp_path):
    (problem,) = problems(tmp_path, EVAL_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [2, 2, 3]"))
    assert problem == "cases/case.yaml:9: input.shape: rank 3 does not fit model 'batchnorm2d'; allowed: rank 4"


def test_input_size_is_capped(tmp_path):
    (problem,) = problems(tmp_path, EVAL_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [4096, 2, 1024, 1024]"))
    assert problem.endswith(f"allowed: at most {MAX_INPUT_ELEMENTS}")


def test_mode_paths_must_name_submodules(tmp_path):
    (problem,) = problems(tmp_path, FORUM_FLIP.replace("bn: eval}", "batchnorm: eval}"))
    assert problem == (
        "cases/case.yaml:7: mode.batchnorm: no submodule 'batchnorm' in model 'forum_net'; allowed: '', 'conv1', 'bn', 'fc1'"
    )


def test_bn_vectors_need_num_features_values_and_finite_numbers(tmp_path):
    text = EVAL_BN2D.replace("running_mean: [0.5, -0.5]", "running_mean: [0.5]").replace(
        "running_var: [2.0, 0.5]", "running_var: [.nan, 0.5]"
    )
    assert problems(tmp_path, text) == [
        "cases/case.yaml:5: bn.running_mean: 1 values for num_features=2; allowed: 2 values",
        "cases/case.yaml:6: bn.running_var: not a finite number; allowed: finite numbers (NaN and Inf belong in input values)",
    ]


def test_literal_values_must_have_the_input_shape_and_exclude_train_steps(tmp_path):
    text = EVAL_BN2D.replace("shape: [2, 2, 3, 3]", "shape: [2, 2]\n  values: [[1, 2], [3]]").replace(
        "model: batchnorm2d", "model: batchnorm1d"
    )
    assert problems(tmp_path, text) == [
        "cases/case.yaml:10: input.values: nested lists of shape ragged/non-numeric; allowed: numbers of shape (2, 2)"
    ]
    text = text.replace("[[1, 2], [3]]", "[[1, 2], [3, 4]]").replace("  - export\n", "  - train_step\n")
    assert problems(tmp_path, text) == [
        "cases/case.yaml:14: steps[1]: train_step draws new seeded batches, but the input is literal values; "
        "allowed: forward steps, a seeded distribution under input, or the train_step's own input"
    ]


def test_expectations_are_checked_against_fields_steps_and_the_reference(tmp_path):
    expect = """\
expect:
  - field: module.bn.trainig
    runners: [onnx-torchscript-ort]
    reason: typo
  - field: output
    step: 3
    runners: [onnx-torchscript-ort]
    reason: no such step
  - field: output
    runners: [torch-eager]
    reason: the reference cannot differ from itself
  - status: export_failed
    field: output
    runners: [onnx-dynamo-ort]
    reason: both
"""
    found = problems(tmp_path, FORUM_FLIP + expect)
    assert found[0].startswith(
        "cases/case.yaml:15: expect[0].field: 'module.bn.trainig' matches no field of model 'forum_net'; allowed: output, module.output, module.training,"
    )
    assert found[1] == "cases/case.yaml:19: expect[1].step: step 3 does not exist; allowed: 0..2 (train_step repeats count one step each)"
    assert found[2].startswith(
        "cases/case.yaml:23: expect[2].runners: torch-eager is the reference every other runner is compared with; allowed: the runner(s) that differ from it:"
    )
    assert found[3] == "cases/case.yaml:25: expect[3]: an expectation names either field / fields or status; allowed: exactly one of them"


GRAPH_NODE = """\
description: a hand-built node
onnx_graph: {opset: 15, training_mode: false, num_features: 2}
input: {shape: [4, 2, 3], seed: 1, dtype: float32}
steps: [forward]
"""


def test_both_case_kinds_reference_the_shared_definitions_not_copies(tmp_path, monkeypatch):
    shared = shared_schema()["$defs"]
    for schema in (case_schema(), graph_case_schema()):
        assert not set(schema["$defs"]) & set(shared), "a shared definition is copied into a case kind's schema"
        resolver = schema_registry().resolver(base_uri=schema["$id"])
        assert resolver.lookup(schema["properties"]["input"]["$ref"]).contents is shared["input"]
    torch_case = EVAL_BN2D.replace("  seed: 1\n", "  seed: 1\n  dtype: float32\n")
    load_text(tmp_path, torch_case)
    load_text(tmp_path, GRAPH_NODE)
    # One change to the shared dtype is seen by the validators of both case kinds.
    monkeypatch.setitem(shared["dtype"], "enum", ["float64"])
    assert problems(tmp_path, torch_case) == ["cases/case.yaml:11: input.dtype: 'float32' is not allowed; allowed: float64"]
    assert problems(tmp_path, GRAPH_NODE) == ["cases/case.yaml:3: input.dtype: 'float32' is not allowed; allowed: float64"]


def test_the_shared_expectations_take_the_runner_names_of_the_case_kind(tmp_path):
    expect = "expect:\n  - field: output\n    runners: [nope]\n    reason: r\n"
    assert problems(tmp_path, EVAL_BN2D + expect) == [
        f"cases/case.yaml:17: expect[0].runners[0]: 'nope' is not allowed; allowed: {', '.join(runner_names())}"
    ]
    assert problems(tmp_path, GRAPH_NODE + expect) == [
        f"cases/case.yaml:7: expect[0].runners[0]: 'nope' is not allowed; allowed: {', '.join(graph_runner_names())}"
    ]


@pytest.mark.parametrize(
    "old, new, expected",
    [
        ("  num_features: 2\n", "  num_features: 2\n  momentun: 0.1\n", "bn.momentun: unknown field (did you mean 'momentum'?)"),
        (
            "mode: eval\n",
            "mode: eval\nrunners: [torch-eager, onnx-torchscrpt-ort]\n",
            "runners[1]: 'onnx-torchscrpt-ort' is not allowed (did you mean 'onnx-torchscript-ort'?)",
        ),
        ("model: batchnorm2d", "model: batchnorm_2d", "model: 'batchnorm_2d' is not allowed (did you mean 'batchnorm2d'?)"),
        ("mode: eval\n", "mode: eval\ncolour: red\n", "colour: unknown field; allowed:"),
    ],
)
def test_a_near_miss_gets_a_did_you_mean(tmp_path, old, new, expected):
    (problem,) = problems(tmp_path, EVAL_BN2D.replace(old, new, 1))
    assert expected in problem, problem


ROUNDS = """\
description: many problems
model: forum_net
bn: {num_features: 3, momentum: 0.1}
mode: {"": train, bnn: eval}
input: {shape: [2, 3, 4, 4]}
runners: [torch-eager, onnx-torchscrpt-ort]
steps:
  - forward
  - export: {training: evl}
expect:
  - field: module.bn.runing_var
    step: 7
    runners: [onnx-torchscript-ort]
    reason: r
    link: not a link
"""


def test_a_files_problems_come_at_once_each_once(tmp_path):
    """The schema's and the rules between fields together: a misspelt runner or export option does
    not hide a mode path or an expectation's field that name nothing (they came in rounds)."""
    found = refused(tmp_path, ROUNDS)
    assert [(problem.line, problem.field) for problem in found] == [
        (4, "mode.bnn"),
        (6, "runners[1]"),
        (9, "steps[1].export.training"),
        (11, "expect[0].field"),
        (15, "expect[0].link"),
    ], "the step index is not checked while a step is malformed (the count may be wrong)"
    assert len(set(map(str, found))) == len(found)


def test_a_negative_magnitude_rtol_is_refused_at_its_line(tmp_path):
    text = EVAL_BN2D + "tolerance:\n  reason: scale\n  float32: {rtol: 1.0e-6, atol: 1.0e-5, magnitude_rtol: -1.0e-6}\n"
    assert [(p.line, p.field, p.message, p.allowed) for p in refused(tmp_path, text)] == [
        (17, "tolerance.float32.magnitude_rtol", "got -1e-06", ">= 0")
    ]


STEP_INPUTS = """\
description: step inputs
model: batchnorm2d
bn: {num_features: 3}
mode: train
input: {shape: [4, 3, 2, 2], seed: 1, values: %s}
steps:
  - train_step: {input: {channel_offset: [1.0, 2.0]}}
  - forward: {input: {shape: [8, 4, 2, 2]}}
  - forward: {input: {values: [[1, 2]]}}
  - forward: {input: {dtype: float64}}
  - forward: {input: {}}
  - forward: {input: {shape: [8, 3, 2, 2]}}
  - train_step: {input: {mean: 3.0}}
""" % ([[[[0.5] * 2] * 2] * 3] * 4)


def test_a_steps_own_input_is_checked_as_an_input_section_at_the_step(tmp_path):
    """Its fields merged with the case's: a field the step inherits is reported at the step's input."""
    assert located(tmp_path, STEP_INPUTS) == [
        (7, "steps[0].train_step.input.channel_offset", "2 values for 3 channels"),
        (8, "steps[1].forward.input", "nested lists of shape (4, 3, 2, 2)"),
        (8, "steps[1].forward.input.shape[1]", "4 channels but bn.num_features is 3"),
        (9, "steps[2].forward.input.values", "nested lists of shape (1, 2)"),
        (10, "steps[3].forward.input.dtype", "unknown field"),
        (11, "steps[4].forward.input", "got 0 keys"),
        (12, "steps[5].forward.input", "nested lists of shape (4, 3, 2, 2)"),
    ], "the case's literal values do not fit a step's other shape; a step that sets a distribution draws its batch"


STATE_STEPS = """\
description: state steps
model: forum_net
bn: {num_features: 2, affine: false}
mode: eval
input: {shape: [2, 3, 4, 4]}
steps:
  - set_state: {bnn: {running_mean: [0.0, 0.0]}}
  - set_state: {bn: {running_var: [1.0, -1.0], weight: [1.0, 1.0]}}
  - set_state: {bn: {running_mean: [0.0]}}
  - set_state: {bn: {momentum: [0.1, 0.1]}}
  - reset_running_stats: [bn, conv1]
  - reset_running_stats
"""


def test_state_steps_name_batchnorms_of_the_model_and_fit_the_bn(tmp_path):
    assert located(tmp_path, STATE_STEPS) == [
        (7, "steps[0].set_state.bnn", "no BatchNorm 'bnn' in model 'forum_net'"),
        (8, "steps[1].set_state.bn.running_var", "a variance is negative"),
        (8, "steps[1].set_state.bn.weight", "this BatchNorm has no weight or bias"),
        (9, "steps[2].set_state.bn.running_mean", "1 values for num_features=2"),
        (10, "steps[3].set_state.bn.momentum", "unknown field"),
        (11, "steps[4].reset_running_stats[1]", "no BatchNorm 'conv1' in model 'forum_net'"),
    ]


def test_a_convolutional_model_has_no_channels_first_keras_port(tmp_path):
    text = EVAL_BN2D.replace("model: batchnorm2d", "model: conv_bn").replace("shape: [2, 2, 3, 3]", "shape: [2, 3, 4, 4]")
    assert [(p.field, p.allowed) for p in refused(tmp_path, text + "keras: {layout: channels_first}\n")] == [
        ("keras.layout", "channels_last, or a bare BatchNorm model")
    ]


BLOCKS = """\
description: blocks
model: %s
bn: {num_features: 3}
model_options: {bias: false, groups: 2}
mode: eval
input: {shape: %s}
steps: [forward]
"""


@pytest.mark.parametrize(
    ("model", "shape", "expected"),
    [
        ("depthwise_conv_bn", "[2, 4, 5, 5]", (6, "input.shape[1]", "4 channels but bn.num_features is 3")),
        ("residual_block", "[2, 2, 5, 5]", (6, "input.shape[1]", "2 channels but bn.num_features is 3")),
        ("linear_bn", "[2, 3, 4, 4]", (6, "input.shape", "rank 4 does not fit model 'linear_bn'")),
    ],
)
def test_blocks_that_keep_their_channels_and_model_options_are_checked(tmp_path, model, shape, expected):
    """A depthwise convolution and a residual addition keep the input's channels: they must be
    bn.num_features; a Linear takes (N, C)."""
    assert located(tmp_path, BLOCKS % (model, shape)) == [(4, "model_options.groups", "unknown field"), expected]


def test_bn_by_path_names_batchnorms_of_the_model_with_vectors_of_num_features(tmp_path):
    text = (
        EVAL_BN2D.replace("model: batchnorm2d", "model: nested_two_bn").replace("shape: [2, 2, 3, 3]", "shape: [2, 3, 3, 3]")
        + "bn_by_path:\n  head.bn: {eps: 0.1}\n  stem.bn: {running_var: [1.0, -1.0], colour: red}\n  head.block.bn: {weight: [1.0]}\n"
    )
    assert [(p.field, p.message) for p in refused(tmp_path, text)] == [
        ("bn_by_path.head.bn", "no BatchNorm 'head.bn' in model 'nested_two_bn'"),
        ("bn_by_path.stem.bn.colour", "unknown field"),
        ("bn_by_path.head.block.bn.weight", "1 values for num_features=2"),
    ], "an entry the schema refused (stem.bn) is not checked further; the others are"


def test_channels_last_is_a_memory_format_of_4_and_5_dimensional_inputs(tmp_path):
    text = EVAL_BN2D.replace("model: batchnorm2d", "model: batchnorm1d").replace("shape: [2, 2, 3, 3]", "shape: [4, 2]")
    assert [(p.field, p.allowed) for p in refused(tmp_path, text + "torch_memory_format: channels_last\n")] == [
        ("torch_memory_format", "contiguous")
    ]


def test_a_steps_own_input_keeps_the_cases_rank(tmp_path):
    """Every runner builds the model, and Keras its port, for the case's input rank."""
    text = EVAL_BN2D.replace("model: batchnorm2d", "model: batchnorm1d").replace("shape: [2, 2, 3, 3]", "shape: [4, 2]")
    text = text.replace("  - forward\n  - export\n  - forward\n", "  - forward\n  - forward: {input: {shape: [4, 2, 5]}}\n")
    assert [(p.field, p.message) for p in refused(tmp_path, text)] == [
        ("steps[1].forward.input.shape", "rank 3 where the case's input has rank 2")
    ]


TRAIN_64 = EVAL_BN2D.replace("mode: eval", "mode: train").replace("shape: [2, 2, 3, 3]", "shape: [64, 2, 3, 3]")


@pytest.mark.parametrize(
    "keras, steps, expected",
    [
        (
            "{fit_batch_size: 8}",
            None,
            ("keras.fit_batch_size", "a Model.fit's batch_size, but train_with is not fit", "train_with: fit"),
        ),
        (
            "{train_with: fit}",
            None,
            ("keras.train_with", "Model.fit trains at train_step steps, and this case has none", "call, or a train_step"),
        ),
        ("{train_with: fit, fit_batch_size: 0}", "  - train_step\n", ("keras.fit_batch_size", "got 0", ">= 1")),
        (
            "{train_with: fit, training_argument: omitted}",
            "  - train_step\n",
            (
                "keras.training_argument",
                "omitted reproduces a call without training=, which Model.fit never makes: it hands training=True to every layer",
                "explicit or model, or train_with: call",
            ),
        ),
        ("{train_with: epochs}", "  - train_step\n", ("keras.train_with", "'epochs' is not allowed", "call, fit")),
        (
            "{train_with: fit, running_var: unbiased}",
            "  - train_step\n  - train_step: {input: {shape: [100, 2, 3, 3]}}\n",
            (
                "keras.running_var",
                "the fit at step 0 takes its batch of 64 in 2 mini-batches of up to 32, one update each, and the unbiased "
                "re-expression of the moving variance reads one update per step",
                "as_stored, or fit_batch_size >= 100",
            ),
        ),
    ],
)
def test_keras_fit_options_are_refused_at_their_line_with_what_is_allowed(tmp_path, keras, steps, expected):
    text = TRAIN_64 if steps is None else TRAIN_64.replace("  - forward\n  - export\n  - forward\n", steps)
    found = [(p.line, p.field, p.message, p.allowed) for p in refused(tmp_path, text + f"keras: {keras}\n")]
    assert found == [(text.count("\n") + 1, *expected)], "at the keras: line, the file's last"


def test_a_fit_in_one_mini_batch_per_step_may_read_the_variance_unbiased(tmp_path):
    text = TRAIN_64.replace("  - forward\n  - export\n  - forward\n", "  - train_step\n")
    case = load_text(tmp_path, text + "keras: {train_with: fit, fit_batch_size: 64, running_var: unbiased}\n")
    assert (case.keras.train_with, case.keras.fit_batch_size, case.keras.running_var) == ("fit", 64, "unbiased")
    assert load_text(tmp_path, text + "keras: {train_with: fit}\n").keras.fit_batch_size == 32, "Model.fit's own default"
