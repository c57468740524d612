"""Models that are not in the zoo: any ONNX file, any nn.Module factory."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgecompile.ir.frontend import ModelOptions, load_model, run_onnxruntime
from edgecompile.platforms.host import HostModel
from edgecompile.compiler import BuildOptions, Progress, write_build
from edgecompile.targets import load_target

from helpers import compare_with_reference


def handwritten_graph(path, with_batchnorm=True):
    """Conv(+BN) -> Relu -> depthwise Conv -> Clip -> MaxPool -> Add(skip) -> GlobalAveragePool
    -> Flatten -> Gemm, written node by node with onnx.helper (no exporter involved)."""
    rng = np.random.default_rng(42)

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        # small biases and shifts: the output then depends on the input (the comparison asserts it)
        init("w1", 8, 3, 3, 3), init("b1", 8, scale=0.05),
        init("bn_scale", 8), init("bn_bias", 8, scale=0.05), init("bn_mean", 8, scale=0.05),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn_var"),
        init("w2", 8, 1, 3, 3), init("b2", 8, scale=0.05),
        numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"),
        numpy_helper.from_array(np.array(6.0, np.float32), "clip_max"),
        init("w3", 8, 8, 1, 1),
        init("fc_w", 5, 8), init("fc_b", 5, scale=0.05),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="stem_conv", pads=[1, 1, 1, 1], strides=[2, 2])]
    if with_batchnorm:
        nodes.append(helper.make_node("BatchNormalization", ["c1", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
                                      ["bn1"], name="stem_bn", epsilon=1e-3))
        last = "bn1"
    else:
        last = "c1"
    nodes += [
        helper.make_node("Relu", [last], ["r1"], name="stem_relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "clip_min", "clip_max"], ["r2"], name="relu6"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="pw"),
        helper.make_node("Add", ["c3", "r1"], ["s"], name="skip"),
        helper.make_node("MaxPool", ["s"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "handwritten",
        # small odd maps: few positions under the global pooling keep the output input-dependent
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 7, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


@pytest.mark.parametrize("with_bn", [True, False], ids=["batchnorm", "plain"])
def test_handwritten_onnx_matches_onnxruntime(tmp_path, with_bn):
    model = handwritten_graph(tmp_path / "m.onnx", with_bn)
    source = load_model(str(tmp_path / "m.onnx"))
    report = write_build(source, load_target("host"), tmp_path / "out", BuildOptions(), Progress(quiet=True))
    built = HostModel(tmp_path / "out")
    compare_with_reference(lambda x: built.run(x)[0], lambda x: run_onnxruntime(model, {"x": x})[0], (1, 3, 7, 11),
                           1e-4)
    assert report["inputs"][0]["shape"] == [1, 3, 7, 11]


def test_batchnorm_is_folded_into_the_conv(tmp_path):
    handwritten_graph(tmp_path / "bn.onnx", True)
    handwritten_graph(tmp_path / "plain.onnx", False)
    a = write_build(load_model(str(tmp_path / "bn.onnx")), load_target("host"), tmp_path / "a",
                    BuildOptions(compile=False), Progress(quiet=True))
    b = write_build(load_model(str(tmp_path / "plain.onnx")), load_target("host"), tmp_path / "b",
                    BuildOptions(compile=False), Progress(quiet=True))
    # same kernels and weight sizes with or without the BatchNormalization node
    assert a["kernels"] == b["kernels"]
    assert a["weights_bytes"] == b["weights_bytes"]


def test_dynamic_batch_needs_input_shape(tmp_path):
    model = handwritten_graph(tmp_path / "m.onnx")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(model, tmp_path / "dyn.onnx")
    from edgecompile.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="dynamic dimension 0 \\('batch'\\)"):
        load_model(str(tmp_path / "dyn.onnx"))
    source = load_model(str(tmp_path / "dyn.onnx"), ModelOptions(input_shape=(1, 3, 7, 11)))
    assert source.inputs[0].shape == (1, 3, 7, 11)


def test_nn_module_factory(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(
        "import torch\n"
        "from torch import nn\n"
        "from edgecompile.models.common import keep_signal\n"
        "def make():\n"
        "    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),\n"
        "                        nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6(),\n"
        "                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))\n"
        "    return keep_signal(net, (1, 3, 16, 16), seed=0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    source = load_model("mynet:make", ModelOptions(input_shape=(1, 3, 16, 16), seed=3))
    write_build(source, load_target("host"), tmp_path / "out", BuildOptions(), Progress(quiet=True))
    built = HostModel(tmp_path / "out")
    compare_with_reference(lambda x: built.run(x)[0], lambda x: source.reference(x)[0], (1, 3, 16, 16), 1e-4)
