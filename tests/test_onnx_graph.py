from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from harness.run.runners.onnx_graph import expose_running_stats, find_batchnorms, stored_values  # noqa: E402


def batchnorm_model(opset: int, training: bool, stat_names=("bn.running_mean", "bn.running_var")) -> onnx.ModelProto:
    attributes = {"epsilon": 1e-5, "momentum": 0.9}
    outputs = ["y"]
    if opset >= 14 and training:
        attributes["training_mode"] = 1
    if training:
        outputs = ["y", "mean_out", "var_out"] + (["saved_mean", "saved_var"] if opset < 14 else [])
    node = helper.make_node("BatchNormalization", ["x", "bn.weight", "bn.bias", *stat_names], outputs, name="bn_node", **attributes)
    initializers = [
        numpy_helper.from_array(np.ones(2, np.float32), "bn.weight"),
        numpy_helper.from_array(np.zeros(2, np.float32), "bn.bias"),
        numpy_helper.from_array(np.float32([0.5, -0.5]), stat_names[0]),
        numpy_helper.from_array(np.float32([2.0, 0.5]), stat_names[1]),
    ]
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2, 3, 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset, training", [(9, True), (9, False), (15, True), (15, False)])
def test_training_mode_comes_from_the_attribute_or_before_opset_14_the_outputs(opset, training):
    (node,) = find_batchnorms(batchnorm_model(opset, training), ["bn"]).values()
    assert node.training is training and node.mean_input == "bn.running_mean"


def test_nodes_map_to_modules_by_initializer_name_else_by_order():
    assert list(find_batchnorms(batchnorm_model(15, False), ["other", "bn"])) == ["bn"]
    renamed = batchnorm_model(15, False, stat_names=("p1", "p2"))
    assert list(find_batchnorms(renamed, ["stem.bn"])) == ["stem.bn"]
    assert find_batchnorms(renamed, ["a", "b"]) == {}, "no name match and no 1:1 order: reported as folded"


def test_exposed_running_stats_are_fed_and_read_back_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = batchnorm_model(15, True)
    nodes = list(find_batchnorms(model, ["bn"]).values())
    (wiring,) = expose_running_stats(model, nodes).values()
    assert (wiring.mean_input, wiring.var_input, wiring.mean_output, wiring.var_output) == (
        "bn.running_mean",
        "bn.running_var",
        "mean_out",
        "var_out",
    )
    assert {value.name for value in model.graph.input} >= {"bn.running_mean", "bn.running_var"}
    assert "bn.running_mean" not in {initializer.name for initializer in model.graph.initializer}
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32)
    mean, var = np.float32([0.5, -0.5]), np.float32([2.0, 0.5])
    for _ in range(2):
        _, mean_out, var_out = session.run(["y", "mean_out", "var_out"], {"x": x, "bn.running_mean": mean, "bn.running_var": var})
        np.testing.assert_allclose(mean_out, 0.9 * mean + 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
        np.testing.assert_allclose(var_out, 0.9 * var + 0.1 * x.var(axis=(0, 2, 3)), rtol=1e-5)
        mean, var = mean_out, var_out


def test_statistics_computed_from_the_batch_count_as_batch_statistics():
    model = batchnorm_model(15, False)
    reduce = helper.make_node("ReduceMean", ["x"], ["batch_mean"], axes=[0, 2, 3], keepdims=0)
    model.graph.node.insert(0, reduce)
    model.graph.node[1].input[3] = "batch_mean"
    (node,) = find_batchnorms(model, ["a"]).values()  # one node, one module: mapped by order
    assert node.training is False and node.stored_stats is False and node.uses_batch_stats is True
    (stored,) = find_batchnorms(batchnorm_model(15, False), ["bn"]).values()
    assert stored.uses_batch_stats is False


def deduplicated_model(training: bool) -> onnx.ModelProto:
    """What the TorchScript exporter makes of a fresh BatchNorm: running_var equals the weight
    (ones) and running_mean the bias (zeros), so it keeps one initializer of each and feeds the
    statistics through Identity."""
    attributes = {"epsilon": 1e-5, "momentum": 0.9, **({"training_mode": 1} if training else {})}
    outputs = ["y", "mean_out", "var_out"] if training else ["y"]
    nodes = [
        helper.make_node("Identity", ["weight"], ["running_var"]),
        helper.make_node("Identity", ["bias"], ["running_mean"]),
        helper.make_node(
            "BatchNormalization", ["x", "weight", "bias", "running_mean", "running_var"], outputs, name="bn_node", **attributes
        ),
    ]
    initializers = [numpy_helper.from_array(np.ones(2, np.float32), "weight"), numpy_helper.from_array(np.zeros(2, np.float32), "bias")]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2, 3, 3])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])


def test_statistics_read_through_identity_copies_are_stored_statistics():
    (node,) = find_batchnorms(deduplicated_model(training=False), [""]).values()
    assert node.stored_stats is True and node.uses_batch_stats is False
    assert (node.mean_source, node.var_source) == ("bias", "weight")
    values = stored_values(deduplicated_model(training=False))
    np.testing.assert_array_equal(values["running_var"], np.ones(2, np.float32))


def test_statistics_from_a_constant_node_are_stored_statistics():
    model = batchnorm_model(15, False)
    del model.graph.initializer[2:]  # the statistics now come from Constant nodes
    constants = [
        helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.float32(values), name))
        for name, values in (("bn.running_mean", [0.5, -0.5]), ("bn.running_var", [2.0, 0.5]))
    ]
    for position, constant in enumerate(constants):
        model.graph.node.insert(position, constant)
    (node,) = find_batchnorms(model, ["bn"]).values()
    assert node.stored_stats is True and node.var_source == "Constant bn.running_var"
    np.testing.assert_array_equal(stored_values(model)["bn.running_var"], np.float32([2.0, 0.5]))


def test_fed_statistics_that_share_an_initializer_with_the_scale_do_not_feed_the_scale():
    ort = pytest.importorskip("onnxruntime")
    model = deduplicated_model(training=True)
    nodes = list(find_batchnorms(model, [""]).values())
    (wiring,) = expose_running_stats(model, nodes).values()
    assert {wiring.mean_input, wiring.var_input} <= {value.name for value in model.graph.input}
    assert {initializer.name for initializer in model.graph.initializer} == {"weight", "bias"}, "the scale keeps its own"
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(4, 2, 3, 3)).astype(np.float32)
    var = np.float32([4.0, 9.0])  # fed as running_var: a scale of 4 or 9 would show in y
    y, _, var_out = session.run(["y", "mean_out", "var_out"], {"x": x, wiring.mean_input: np.zeros(2, np.float32), wiring.var_input: var})
    mean, batch_var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
    expected = (x - mean.reshape(1, 2, 1, 1)) / np.sqrt(batch_var.reshape(1, 2, 1, 1) + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var_out, 0.9 * var + 0.1 * batch_var, rtol=1e-5)
