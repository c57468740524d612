"""Frontend: a model argument (zoo name, ONNX file, or `module:factory`) -> ONNX -> TVM Relax.

The ONNX graph is the contract between the user's model and the compiler: every source is
turned into one validated, shape-inferred ONNX model with static shapes before Relax sees it.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, UnsupportedModelError
from .operators import ONNX_ACCEPTED

ONNX_OPSET = 13


@dataclass(frozen=True)
class ModelOptions:
    """Options shared by inspect / build / bench. None means "the model's default"."""

    width_mult: float | None = None
    resolution: int | None = None
    num_classes: int | None = None       # None: the weights file's, else 1000
    seed: int = 0
    weights: str | None = None
    groups: int | None = None
    input_shape: tuple[int, ...] | None = None

    def describe(self) -> dict[str, Any]:
        """The options as recorded in report.json (enough to rebuild the reference model)."""
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.weights:
            out["weights"] = str(Path(self.weights).resolve())
        if self.input_shape:
            out["input_shape"] = list(self.input_shape)
        return out


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass
class ModelSource:
    """A loaded model: its ONNX form plus a way to compute reference outputs on the host."""

    name: str
    onnx_model: Any                      # onnx.ModelProto
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    torch_module: Any = None             # nn.Module for zoo/user models, None for ONNX files
    options: dict[str, Any] = field(default_factory=dict)

    def reference(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Outputs computed by PyTorch (zoo, nn.Module) or onnxruntime (ONNX files)."""
        if self.torch_module is not None:
            import torch

            with torch.no_grad():
                out = self.torch_module(*[torch.from_numpy(np.ascontiguousarray(x)) for x in inputs])
            outs = out if isinstance(out, (tuple, list)) else [out]
            return [o.detach().numpy() for o in outs]
        return run_onnxruntime(self.onnx_model, dict(zip([i.name for i in self.inputs], inputs)))


def run_onnxruntime(model: Any, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """The model on onnxruntime's CPU provider, one thread. optimize=False runs the graph as
    written: a QDQ model's DequantizeLinear -> float op -> QuantizeLinear, the reference semantics
    of its scales (optimised, onnxruntime fuses them into QLinearConv & co., whose x86 kernels on a
    CPU without VNNI add u8 x s8 products in pairs in 16 bits and may saturate)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise ModelError(f"--input-shape must look like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise ModelError(f"--input-shape must be positive integers, got {text!r}")
    return shape


# ----------------------------------------------------------------------------- loading


def load_model(spec: str, options: ModelOptions = ModelOptions()) -> ModelSource:
    """Resolve a model argument: zoo name, path to an .onnx file, or `package.module:factory`."""
    from edgecompile.models import ZOO

    if spec in ZOO:
        return _load_zoo(spec, options)
    if spec.endswith(".onnx") or os.path.sep in spec or Path(spec).is_file():
        return _load_onnx_file(Path(spec), options)
    if ":" in spec:
        return _load_factory(spec, options)
    raise ModelError(
        f"unknown model {spec!r}: not a zoo model ({', '.join(ZOO)}), "
        "not an .onnx file, not module:factory"
    )


def _load_zoo(name: str, options: ModelOptions) -> ModelSource:
    from edgecompile.models import ModelOptionError, build_model
    from edgecompile.models.weights import WeightsError, resolve_options

    if options.input_shape is not None:
        raise ModelError("--input-shape is for ONNX files and nn.Module factories; zoo models take --resolution")
    given = {"num_classes": options.num_classes, "width_mult": options.width_mult, "groups": options.groups,
             "resolution": options.resolution}
    try:
        arch = resolve_options(options.weights, name, given)
        arch["num_classes"] = arch["num_classes"] or 1000
        module, shape = build_model(name, **{k: arch.get(k) for k in given}, seed=options.seed, weights=options.weights)
    except (ModelOptionError, WeightsError) as err:
        raise ModelError(str(err)) from None
    resolved = replace(options, **{k: v for k, v in arch.items() if k in given})
    return _from_torch(name, module, shape, resolved)


def _load_factory(spec: str, options: ModelOptions) -> ModelSource:
    import torch

    from edgecompile.models.weights import WeightsError, load_into, read_weights

    module_name, _, attr = spec.partition(":")
    if options.input_shape is None:
        raise ModelError(f"{spec}: an nn.Module factory needs --input-shape N,C,H,W")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # noqa: BLE001 - the user's module may raise anything on import
        raise ModelError(f"{spec}: cannot import factory: {type(err).__name__}: {_first_line(err)}") from None
    torch.manual_seed(options.seed)
    try:
        module = factory()
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything
        raise ModelError(f"{spec}: the factory raised {type(err).__name__}: {_first_line(err)}") from None
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{spec}: factory returned {type(module).__name__}, not an nn.Module")
    if options.weights:
        try:
            state, _ = read_weights(options.weights)
            load_into(module, state, options.weights, spec)
        except WeightsError as err:
            raise ModelError(str(err)) from None
    module.eval()
    name = attr if attr else module_name.rsplit(".", 1)[-1]
    return _from_torch(name, module, options.input_shape, options)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else "(no message)"


def _from_torch(name: str, module: Any, shape: tuple[int, ...], options: ModelOptions) -> ModelSource:
    import onnx
    import torch

    buf = io.BytesIO()
    example = torch.zeros(shape)
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                input_names=["input"], output_names=["output"], do_constant_folding=True,
            )
        except Exception as err:  # the exporter raises many types
            raise UnsupportedModelError(f"{name}: PyTorch could not export to ONNX: {err}") from None
    model = _prepare(onnx.load_from_string(buf.getvalue()), name, None)
    source = _make_source(name, model)
    source.torch_module = module
    source.options = options.describe()
    return source


def _load_onnx_file(path: Path, options: ModelOptions) -> ModelSource:
    import onnx

    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if options.weights:
        raise ModelError(f"--weights is for zoo models and nn.Module factories; {path} carries its own weights")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError and friends
        raise ModelError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err})") from None
    if len(model.graph.node) == 0:
        raise ModelError(f"{path}: the ONNX graph has no nodes")
    model = _prepare(model, str(path), options.input_shape)
    source = _make_source(path.stem, model)
    source.options = options.describe()
    return source


def _prepare(model: Any, where: str, input_shape: tuple[int, ...] | None) -> Any:
    """Validate, fix the input shape, simplify (constant folding) and infer all shapes."""
    import onnx
    import onnxscript.optimizer

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise ModelError(f"{where}: invalid ONNX model: {first}") from None
    initializers = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if input_shape is not None:
        if len(graph_inputs) != 1:
            raise ModelError(f"{where}: --input-shape needs a model with one input, it has {len(graph_inputs)}")
        dims = graph_inputs[0].type.tensor_type.shape.dim
        if len(dims) != len(input_shape):
            raise ModelError(
                f"{where}: --input-shape has {len(input_shape)} dimensions, input "
                f"'{graph_inputs[0].name}' has {len(dims)}"
            )
        for d, v in zip(dims, input_shape):
            if d.HasField("dim_value") and d.dim_value != v:
                raise ModelError(
                    f"{where}: --input-shape {input_shape} conflicts with the model's input shape"
                )
            d.ClearField("dim_param")
            d.dim_value = v
    for inp in graph_inputs:
        tt = inp.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise UnsupportedModelError(
                f"{where}: input '{inp.name}' has type "
                f"{onnx.TensorProto.DataType.Name(tt.elem_type)}; only float32 inputs are supported"
            )
        for i, d in enumerate(tt.shape.dim):
            if not d.HasField("dim_value") or d.dim_value <= 0:
                label = d.dim_param or "?"
                raise UnsupportedModelError(
                    f"{where}: input '{inp.name}' has a dynamic dimension {i} ('{label}'); "
                    "pass --input-shape to fix it"
                )
    _check_operators(model, where)
    _rewrite_variadic(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = onnxscript.optimizer.optimize(model)
        except Exception as err:  # noqa: BLE001 - optimizer failures are not fatal
            print(f"warning: {where}: ONNX simplification skipped ({err})", file=sys.stderr)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"{where}: ONNX shape inference failed: {str(err).splitlines()[0]}") from None
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            raise UnsupportedModelError(f"{where}: output '{out.name}' has a dynamic shape")
    return model


def _check_operators(model: Any, where: str) -> None:
    """Every node must be an operator of the registry (ir/operators.py): what the backend runs."""
    initializers = {i.name: i for i in model.graph.initializer}
    for i, node in enumerate(model.graph.node):
        label = node.name or f"#{i}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_ACCEPTED:
            domain = f"{node.domain}." if node.domain not in ("", "ai.onnx") else ""
            raise UnsupportedModelError(
                f"{where}: node '{label}' uses unsupported operator {domain}{node.op_type}"
            )
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            mode = initializers.get(node.input[2])
            import onnx.numpy_helper

            if mode is None or bool(onnx.numpy_helper.to_array(mode)):
                raise UnsupportedModelError(f"{where}: node '{label}' (Dropout) runs in training mode; export the "
                                            "model for inference (model.eval())")


def _rewrite_variadic(model: Any) -> None:
    """Max/Min/Sum/Mean of several tensors as chains of binary operations (TVM imports them as a
    stack and a reduction over a new axis, which its layout conversion cannot handle)."""
    import onnx
    from onnx import helper

    graph = model.graph
    nodes = list(graph.node)
    new_nodes: list[Any] = []
    for k, node in enumerate(nodes):
        if node.domain not in ("", "ai.onnx") or node.op_type not in ("Max", "Min", "Sum", "Mean"):
            new_nodes.append(node)
            continue
        ins, out, tag = list(node.input), node.output[0], f"{node.name or node.op_type}_{k}"
        if len(ins) == 1:
            new_nodes.append(helper.make_node("Identity", ins, [out], name=tag))
            continue
        acc = ins[0]
        for j, other in enumerate(ins[1:]):
            last = j == len(ins) - 2 and node.op_type != "Mean"
            res = out if last else f"{tag}_acc{j}"
            if node.op_type in ("Sum", "Mean"):
                new_nodes.append(helper.make_node("Add", [acc, other], [res], name=f"{tag}_add{j}"))
            else:
                cmp = f"{tag}_cmp{j}"
                new_nodes.append(helper.make_node("Greater" if node.op_type == "Max" else "Less", [acc, other], [cmp],
                                                  name=f"{tag}_cmp{j}"))
                new_nodes.append(helper.make_node("Where", [cmp, acc, other], [res], name=f"{tag}_pick{j}"))
            acc = res
        if node.op_type == "Mean":
            scale = f"{tag}_inv_count"
            graph.initializer.append(helper.make_tensor(scale, onnx.TensorProto.FLOAT, [], [1.0 / len(ins)]))
            new_nodes.append(helper.make_node("Mul", [acc, scale], [out], name=f"{tag}_mean"))
    del graph.node[:]
    graph.node.extend(new_nodes)


def _make_source(name: str, model: Any) -> ModelSource:
    initializers = {i.name for i in model.graph.initializer}

    def spec(v: Any) -> TensorSpec:
        import onnx

        tt = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name
        return TensorSpec(v.name, tuple(int(d.dim_value) for d in tt.shape.dim), dtype)

    inputs = [spec(i) for i in model.graph.input if i.name not in initializers]
    outputs = [spec(o) for o in model.graph.output]
    for o in outputs:
        if o.dtype != "float32":
            raise UnsupportedModelError(f"{name}: output '{o.name}' is {o.dtype}; only float32 outputs are supported")
    return ModelSource(name=name, onnx_model=model, inputs=inputs, outputs=outputs)


# ----------------------------------------------------------------------------- to Relax


def to_relax(source: ModelSource) -> Any:
    """Import the ONNX model into a Relax IRModule with weights bound as constants. A node that
    TVM's importer cannot convert is named in the error, with its operator."""
    from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter

    class Importer(ONNXGraphImporter):
        """TVM's importer, remembering which node it converts."""

        def _convert_operator(self, op_name: str, inputs: list, attrs: dict, opset: int) -> Any:
            self.ec_node = (attrs.get("tvm_custom", {}).get("name") or "", op_name)
            return super()._convert_operator(op_name, inputs, attrs, opset)

    model = source.onnx_model
    importer = Importer({i.name: list(i.shape) for i in source.inputs}, "float32", keep_params_in_input=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return importer.from_onnx(model.graph, opset)
    except Exception as err:  # noqa: BLE001 - TVM raises many types; report one line
        text = str(err).strip()
        first = text.splitlines()[-1] if text else type(err).__name__
        name, op = getattr(importer, "ec_node", ("", ""))
        where = f"node '{name or '(unnamed)'}' ({op}): " if op else ""
        raise UnsupportedModelError(f"{source.name}: {where}TVM's ONNX importer failed: {first[:300]}") from None
