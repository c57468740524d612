"""The operator registry: everything the compiler knows about an operator, in one entry.

An entry is one Relax operator (what TVM's ONNX importer produces and our passes rewrite) with

* `onnx`:      the ONNX operator types the frontend accepts for it, each with the layer category
               `inspect` counts it under (conv, fc, pool, other);
* `fold`:      how to evaluate it with numpy when every argument is a constant (weights never go
               through TVM's per-operator JIT);
* `int8`:      the name of its rule in the int8 rewrite (`quantize.RULES`), None if it has none;
* `reduction`: regular expressions of the TIR reduction blocks its legalization creates, and
  `anchor`:    which analysis classifies a kernel anchored on such a block (`kernel.analyze`:
               conv, matmul, pool, reduce), hence the kernel `Kind` and the schedule rule.

Adding an operator is one entry here plus its rules (an int8 rule, a schedule rule for a new
kind). A kernel whose reduction matches no entry is an error naming the block, never a silent
fallback; an ONNX operator in no entry is refused by the frontend with the node's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

import numpy as np


class Kind(StrEnum):
    """What a fused kernel computes, by its anchor (its reduction)."""

    CONV = "conv"                 # KxK convolution, groups = 1
    CONV_PW = "conv_pw"           # 1x1 convolution
    CONV_DW = "conv_dw"           # depthwise convolution
    CONV_GROUP = "conv_group"     # grouped convolution
    DWPW = "dwpw"                 # fused depthwise + pointwise (one kernel, two reductions)
    FC = "fc"                     # matrix multiply (dense layer)
    POOL = "pool"                 # max / average pooling window
    MEAN = "mean"                 # sum-reduction over axes (mean, global average pool, sum)
    REDUCE = "reduce"             # other reductions (max, min, softmax's max and sum)
    ELEMENTWISE = "elementwise"   # no reduction

    @property
    def is_conv(self) -> bool:
        return self in (Kind.CONV, Kind.CONV_PW, Kind.CONV_DW, Kind.CONV_GROUP)


Fold = Callable[[list[np.ndarray], Any, Any], np.ndarray]


@dataclass(frozen=True)
class Operator:
    relax: str                                           # Relax op name ("" for ONNX-only: folded at import)
    onnx: dict[str, str] = field(default_factory=dict)   # ONNX op type -> inspect's layer category
    fold: Fold | None = None
    int8: str | None = None
    reduction: tuple[str, ...] = ()
    anchor: str | None = None                            # conv | matmul | pool | reduce


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in var.ty.shape)


def _permute(a: list[np.ndarray], attrs: Any, out: Any) -> np.ndarray:
    axes = getattr(attrs, "axes", None)
    return np.transpose(a[0], [int(x) for x in axes]) if axes is not None else a[0].T


def _to_out_shape(a: list[np.ndarray], attrs: Any, out: Any) -> np.ndarray:
    return a[0].reshape(_shape(out))


def _unary(fn: Callable[[np.ndarray], np.ndarray]) -> Fold:
    return lambda a, attrs, out: fn(a[0])


def _binary(fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fold:
    return lambda a, attrs, out: fn(a[0], a[1])


_CONV_BLOCKS = (r"conv2d_nhwc", r"group_conv2d_nhwc", r"conv2d_nchw", r"group_conv2d_nchw")
_RED = r".+_red"       # topi's reductions (sum, max, min, prod) name their block <input>_red

REGISTRY: tuple[Operator, ...] = (
    # ---- anchors: convolutions, matrix products, pooling, reductions
    Operator("relax.nn.conv2d", {"Conv": "conv"}, int8="conv2d", reduction=_CONV_BLOCKS, anchor="conv"),
    Operator("relax.matmul", {"MatMul": "fc", "Gemm": "fc"}, int8="matmul", reduction=(r"matmul", r"T_matmul_NT"),
             anchor="matmul"),
    Operator("relax.nn.max_pool2d", {"MaxPool": "pool"}, int8="passthrough",
             reduction=(r"pool_max",), anchor="pool"),
    Operator("relax.nn.avg_pool2d", {"AveragePool": "pool"}, int8="avg_pool2d", reduction=(r"pool_sum",),
             anchor="pool"),
    Operator("relax.nn.adaptive_avg_pool2d", {}, reduction=(r"adaptive_pool_sum",), anchor="pool"),
    Operator("relax.mean", {"GlobalAveragePool": "pool", "ReduceMean": "other", "Mean": "other"}, int8="mean", reduction=(_RED,),
             anchor="reduce"),
    Operator("relax.sum", {"ReduceSum": "other", "ReduceL2": "other", "Sum": "other"}, reduction=(_RED,), anchor="reduce"),
    Operator("relax.max", {"ReduceMax": "other", "GlobalMaxPool": "pool", "Max": "other"}, reduction=(_RED,), anchor="reduce"),
    Operator("relax.min", {"ReduceMin": "other", "Min": "other"}, reduction=(_RED,), anchor="reduce"),
    Operator("relax.prod", {"ReduceProd": "other"}, reduction=(_RED,), anchor="reduce"),
    Operator("relax.variance", {"InstanceNormalization": "other"}, reduction=(_RED,), anchor="reduce"),
    Operator("relax.nn.softmax", {"Softmax": "other"}, reduction=(r"T_softmax_maxelem", r"T_softmax_expsum"),
             anchor="reduce"),
    # ---- elementwise
    Operator("relax.add", {"Add": "other"}, fold=_binary(np.add), int8="add"),
    Operator("relax.subtract", {"Sub": "other"}, fold=_binary(np.subtract)),
    Operator("relax.multiply", {"Mul": "other"}, fold=_binary(np.multiply), int8="multiply"),
    Operator("relax.divide", {"Div": "other", "Reciprocal": "other"}, fold=_binary(np.divide)),
    Operator("relax.power", {"Pow": "other"}, fold=_binary(np.power)),
    # Clip with constant bounds imports as call_tir(maximum/minimum) and becomes these again
    # (passes.clip_calls_to_relax_ops); Max/Min/Sum/Mean of several tensors import as stack + reduction
    Operator("relax.maximum", {"Clip": "other"}, fold=_binary(np.maximum), int8="maximum"),
    Operator("relax.minimum", {}, fold=_binary(np.minimum), int8="minimum"),
    Operator("relax.clip", {"HardSigmoid": "other", "HardSwish": "other"}),
    Operator("relax.nn.relu", {"Relu": "other", "Elu": "other", "Selu": "other"}, int8="relu"),
    Operator("relax.sigmoid", {"Sigmoid": "other"}, int8="sigmoid"),
    Operator("relax.tanh", {"Tanh": "other", "Mish": "other"}),
    Operator("relax.nn.leakyrelu", {"LeakyRelu": "other"}),
    Operator("relax.nn.gelu", {"Gelu": "other"}),
    Operator("relax.erf", {"Erf": "other"}),
    Operator("relax.negative", {"Neg": "other"}, fold=_unary(np.negative)),
    Operator("relax.abs", {"Abs": "other", "Softsign": "other", "Softplus": "other"}, fold=_unary(np.abs)),
    Operator("relax.sign", {"Sign": "other"}, fold=_unary(np.sign)),
    Operator("relax.floor", {"Floor": "other"}, fold=_unary(np.floor)),
    Operator("relax.ceil", {"Ceil": "other"}, fold=_unary(np.ceil)),
    Operator("relax.round", {"Round": "other"}),
    Operator("relax.sqrt", {"Sqrt": "other"}, fold=_unary(np.sqrt)),
    Operator("relax.rsqrt", {}, fold=_unary(lambda x: 1.0 / np.sqrt(x))),
    Operator("relax.exp", {"Exp": "other"}, fold=_unary(np.exp)),
    Operator("relax.log", {"Log": "other"}, fold=_unary(np.log)),
    Operator("relax.sin", {"Sin": "other"}, fold=_unary(np.sin)),
    Operator("relax.cos", {"Cos": "other"}, fold=_unary(np.cos)),
    Operator("relax.isnan", {}, fold=_unary(np.isnan)),
    Operator("relax.less", {"PRelu": "other", "Less": "other"}),
    Operator("relax.greater", {"Greater": "other"}),
    Operator("relax.where", {"Where": "other"}, fold=lambda a, attrs, out: np.where(a[0], a[1], a[2])),
    Operator("relax.astype", {"Cast": "other"}, fold=lambda a, attrs, out: a[0].astype(str(attrs.dtype))),
    Operator("relax.nn.batch_norm", {"BatchNormalization": "other"}),    # decomposed, folded into the conv
    Operator("relax.nn.dropout", {"Dropout": "other"}),                  # removed for inference
    # ---- data movement: int8 values pass through with their scale
    Operator("relax.reshape", {"Reshape": "other", "Flatten": "other"}, fold=_to_out_shape, int8="passthrough"),
    Operator("relax.flatten", {}, fold=_to_out_shape, int8="passthrough"),
    Operator("relax.squeeze", {"Squeeze": "other"}, fold=_to_out_shape, int8="passthrough"),
    Operator("relax.expand_dims", {"Unsqueeze": "other"}, fold=_to_out_shape, int8="passthrough"),
    Operator("relax.permute_dims", {"Transpose": "other"}, fold=_permute, int8="passthrough"),
    Operator("relax.strided_slice", {"Slice": "other"}, int8="passthrough"),
    Operator("relax.split", {"Split": "other"}, int8="split"),
    Operator("relax.concat", {"Concat": "other"}, int8="concat"),
    Operator("relax.take", {"Gather": "other"}),
    Operator("relax.broadcast_to", {"Expand": "other"}),
    Operator("relax.stack", {}),
    Operator("relax.nn.pad", {"Pad": "other"}),
    # ---- integer arithmetic the int8 rewrite itself emits
    Operator("relax.left_shift", {}),
    Operator("relax.right_shift", {}),
    # ---- QDQ models: quantize/dequantize pairs are removed (passes.strip_qdq)
    Operator("relax.quantize", {"QuantizeLinear": "other"}),
    Operator("relax.dequantize", {"DequantizeLinear": "other"}),
    # ---- ONNX operators that exist only at import time (constants, shape arithmetic, no-ops)
    Operator("", {"Constant": "other", "Identity": "other", "Shape": "other", "ConstantOfShape": "other"}),
)

_BY_RELAX = {op.relax: op for op in REGISTRY if op.relax}
ONNX_ACCEPTED: dict[str, str] = {name: layer for op in REGISTRY for name, layer in op.onnx.items()}


def lookup(relax_op: str) -> Operator | None:
    return _BY_RELAX.get(relax_op)


def folder(relax_op: str) -> Fold | None:
    op = _BY_RELAX.get(relax_op)
    return op.fold if op else None


def onnx_layer(op_type: str) -> str:
    """The layer category `inspect` counts an ONNX operator under."""
    return ONNX_ACCEPTED.get(op_type, "other")


def reduction_anchor(block_name: str) -> str | None:
    """The anchor class (conv, matmul, pool, reduce) of a TIR reduction block, from the entry
    whose `reduction` patterns match its name; None when no registered operator makes it."""
    for op in REGISTRY:
        if op.anchor and any(re.fullmatch(p, block_name) for p in op.reduction):
            return op.anchor
    return None
