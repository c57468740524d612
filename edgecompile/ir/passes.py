"""Relax passes: graph rewrites from the imported model to fused TIR kernel calls.

Each pass is a function IRModule -> IRModule. `prepare_graph` runs the float rewrites (1-3,
and the removal of a QDQ model's quantize/dequantize pairs); `lower_graph` the rest (4):

1. `fold_constants`   evaluate constant sub-expressions with numpy (weights never go through
                      TVM's per-operator JIT, which is what makes FoldConstant slow);
2. `fold_affine_into_conv`  BatchNorm folding: per-output-channel scale/shift chains after a
                      convolution (BatchNorm decomposed, explicit scales, bias adds) become the
                      convolution's weights and one bias;
3. `to_nhwc`          channels-last activations and HWIO weights, the layout our ARM schedules
                      vectorise over (TFLite, CMSIS-NN and TinyEngine use it too);
4. legalize to TIR, annotate patterns, fuse elementwise epilogues into their producers, fuse TIR.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..errors import UnsupportedModelError
from . import operators
from .kernel import analyze
from .operators import Kind


def _tvm():
    import tvm
    from tvm import relax

    return tvm, relax


# ----------------------------------------------------------------------------- helpers


def _is_const(e: Any) -> bool:
    import tvm

    return isinstance(e, tvm.ir.expr.Constant)


def _np(e: Any) -> np.ndarray:
    return e.value.numpy()


def _all_constant(args: list[Any]) -> bool:
    """A call's arguments are known: constants, and static shapes (`reshape`'s target shape)."""
    from tvm import relax

    return bool(args) and _is_const(args[0]) and all(
        _is_const(a) or (isinstance(a, relax.ShapeExpr) and _shape_value(a) is not None) for a in args)


def _shape_value(e: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(v) for v in e.values)
    except (TypeError, ValueError):     # a symbolic dimension
        return None


def _shape(e: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in e.ty.shape)


def _attr_axes(attrs: Any, name: str) -> list[int] | None:
    value = getattr(attrs, name, None)
    return None if value is None else [int(a) for a in value]


def _rebuild_main(mod: Any, rewrite: Callable[[Any, Any, dict, Callable], Any]) -> Any:
    """Rebuild `main` binding by binding. `rewrite(var, value, env, emit)` returns the new value
    for the binding (an Expr to bind to `var`), or None when it handled the binding itself
    (recorded a replacement in `env` or emitted through `emit`)."""
    tvm, relax = _tvm()
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rebuilder(PyExprMutator):
        def __init__(self, mod: Any) -> None:
            super().__init__(mod)
            self.env: dict[Any, Any] = {}

        def visit_var_(self, var: Any) -> Any:  # noqa: N802 - TVM visitor name
            return self.env.get(var, var)

        def visit_dataflow_var_(self, var: Any) -> Any:  # noqa: N802
            return self.env.get(var, var)

        def visit_var_binding_(self, binding: Any) -> None:  # noqa: N802
            value = self.visit_expr(binding.value)

            def emit(expr: Any, name: str = "v") -> Any:
                return self.builder_.emit(expr, name)

            new = rewrite(binding.var, value, self.env, emit)
            if new is not None:
                if not new.same_as(value):
                    new = self.builder_.normalize(new)
                self.builder_.emit_normalized(relax.VarBinding(binding.var, new))

    rb = _Rebuilder(mod)
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rb.builder_.update_func(gv, rb.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rb.builder_.get())


# ----------------------------------------------------------------------------- passes


def fold_constants(mod: Any) -> Any:
    """Evaluate calls whose arguments are all constants with numpy (then TVM's FoldConstant for
    anything numpy does not know, which is normally nothing)."""
    tvm, relax = _tvm()

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        if _is_const(value):
            env[var] = value
            return None
        if isinstance(value, relax.Tuple) and all(_is_const(f) for f in value.fields):
            return value
        if isinstance(value, relax.TupleGetItem) and isinstance(value.tuple_value, relax.Tuple):
            item = value.tuple_value.fields[value.index]
            if _is_const(item):
                env[var] = item
                return None
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            fold = operators.folder(value.op.name)
            args = list(value.args)
            if fold is not None and _all_constant(args):
                result = fold([_np(a) if _is_const(a) else _shape_value(a) for a in args], value.attrs, var)
                dtype = str(var.ty.dtype)
                env[var] = relax.const(np.array(result, dtype=dtype, order="C"), dtype)
                return None
        return value

    mod = _rebuild_main(mod, rewrite)
    # TVM's FoldConstant takes seconds on a big network even with nothing to fold: run it only
    # for what numpy left (an operator without a numpy folder)
    return relax.transform.FoldConstant()(mod) if _has_constant_call(mod) else mod


def _has_constant_call(mod: Any) -> bool:
    tvm, relax = _tvm()
    found = []

    def visit(expr: Any) -> None:
        if not found and isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and _all_constant(expr.args):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


def clip_calls_to_relax_ops(mod: Any) -> Any:
    """TVM's ONNX importer lowers Clip straight to `call_tir(maximum/minimum, (x, scalar))`.
    Opaque calls block layout conversion and fusion, so turn them back into Relax
    `maximum`/`minimum` ops (which fuse into the producing convolution's epilogue)."""
    tvm, relax = _tvm()
    import re

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)
                and value.op.name == "relax.call_tir"):
            callee = value.args[0].name_hint
            args = list(value.args[1].fields)
            kind = re.sub(r"\d+$", "", callee)
            if kind in ("maximum", "minimum") and len(args) == 2 and _is_const(args[1]) and _np(args[1]).size == 1:
                op = relax.op.maximum if kind == "maximum" else relax.op.minimum
                return op(args[0], args[1])
        return value

    return relax.transform.DeadCodeElimination()(_rebuild_main(mod, rewrite))


def fold_affine_into_conv(mod: Any) -> Any:
    """Fold per-output-channel multiply/divide/add/subtract by constants that follow a conv2d
    (NCHW, constant weights) into the conv's weights and a single bias add.

    This is BatchNorm folding in its general form: after `DecomposeOpsForInference`, an inference
    BatchNorm is `(x - mean) / sqrt(var + eps) * gamma + beta`, which becomes per-channel
    constants that this pass absorbs. A conv output used more than once, or that is the model's
    output, is never folded into.
    """
    tvm, relax = _tvm()
    uses = _use_counts(mod["main"])
    for v in _free_uses(mod["main"].body.body):     # a model output stays a binding of its own
        uses[v] = uses.get(v, 0) + 1
    pending: dict[Any, dict[str, Any]] = {}  # var -> {"x", "w", "attrs", "bias", "ty"}

    def foldable(var: Any) -> bool:
        """Used once, inside the dataflow block: a block output (the model's result) is used by
        the return, which never materializes a pending conv."""
        return uses.get(var, 0) == 1 and isinstance(var, relax.DataflowVar)

    def channel_vector(c: Any, channels: int) -> np.ndarray | None:
        if not _is_const(c):
            return None
        v = _np(c)
        if v.size == 1:
            return np.full(channels, v.reshape(()), dtype=np.float32)
        if v.ndim >= 2 and v.shape[-3:] == (channels, 1, 1) and v.size == channels:
            return v.reshape(channels)
        return None

    def materialize(p: dict[str, Any], emit: Callable) -> Any:
        w = relax.const(np.array(p["w"], dtype=np.float32, order="C"), "float32")
        conv = relax.Call(p["op"], [p["x"], w], p["attrs"], p["ty_args"])
        if p["bias"] is None:
            return conv
        out = emit(conv, "conv")
        bias = relax.const(p["bias"].reshape(1, -1, 1, 1).astype(np.float32))
        return relax.op.add(out, bias)

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            name = value.op.name
            args = list(value.args)
            if (name == "relax.nn.conv2d" and len(args) == 2 and _is_const(args[1])
                    and str(value.attrs.data_layout) == "NCHW" and str(value.attrs.kernel_layout) == "OIHW"
                    and str(var.ty.dtype) == "float32" and foldable(var)):
                x = args[0]
                if x in pending:   # a folded conv feeding this one
                    env[x] = emit(materialize(pending.pop(x), emit), "conv_out")
                pending[var] = {"op": value.op, "x": env.get(x, x), "w": _np(args[1]).astype(np.float32),
                                "attrs": value.attrs, "ty_args": value.ty_args, "bias": None}
                return None
            if name in ("relax.multiply", "relax.divide", "relax.add", "relax.subtract") and len(args) == 2:
                src, const = args
                if src not in pending and name in ("relax.multiply", "relax.add") and args[1] in pending:
                    src, const = args[1], args[0]
                p = pending.get(src)
                cout = p["w"].shape[0] if p is not None else 0
                vec = channel_vector(const, cout) if p is not None else None
                if p is not None and vec is not None and _shape(var) == _shape(src):
                    del pending[src]
                    q = dict(p)
                    if name in ("relax.multiply", "relax.divide"):
                        scale = vec if name == "relax.multiply" else 1.0 / vec
                        q["w"] = p["w"] * scale.reshape(-1, 1, 1, 1)
                        q["bias"] = None if p["bias"] is None else p["bias"] * scale
                    else:
                        shift = vec if name == "relax.add" else -vec
                        q["bias"] = shift if p["bias"] is None else p["bias"] + shift
                    if foldable(var):
                        pending[var] = q
                        return None
                    return materialize(q, emit)
        # any other use of a pending conv output: emit the conv first
        for arg in _free_uses(value):
            if arg in pending:
                env[arg] = emit(materialize(pending.pop(arg), emit), "conv_out")
        return _substitute(value, env)

    return _rebuild_main(mod, rewrite)


def _free_uses(value: Any) -> list[Any]:
    """Vars used directly by a binding value, looking inside tuples."""
    _, relax = _tvm()
    if isinstance(value, relax.Var):
        return [value]
    if isinstance(value, relax.Call):
        return [v for a in value.args for v in _free_uses(a)]
    if isinstance(value, relax.Tuple):
        return [v for f in value.fields for v in _free_uses(f)]
    if isinstance(value, relax.TupleGetItem):
        return _free_uses(value.tuple_value)
    return []


def _substitute(value: Any, env: dict) -> Any:
    _, relax = _tvm()
    if isinstance(value, relax.Var):
        return env.get(value, value)
    if isinstance(value, relax.Call):
        return relax.Call(value.op, [_substitute(a, env) for a in value.args], value.attrs, value.ty_args)
    if isinstance(value, relax.Tuple):
        return relax.Tuple([_substitute(f, env) for f in value.fields])
    if isinstance(value, relax.TupleGetItem):
        return relax.TupleGetItem(_substitute(value.tuple_value, env), value.index)
    return value


def constant_elements(mod: Any) -> int:
    """Elements of the distinct constants `main` uses (the weights, before quantization or packing)."""
    _, relax = _tvm()
    seen: dict[Any, int] = {}

    def visit(e: Any) -> None:
        if _is_const(e) and getattr(e.ty, "shape", None) is not None:
            seen[e] = int(np.prod([int(d) for d in e.ty.shape]))

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return sum(seen.values())


def _use_counts(func: Any) -> dict[Any, int]:
    _, relax = _tvm()
    counts: dict[Any, int] = {}

    def visit(e: Any) -> None:
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    relax.analysis.post_order_visit(func.body, visit)
    return counts


def to_nhwc(mod: Any) -> Any:
    _, relax = _tvm()
    # Pooling and elementwise ops follow their input's layout.
    layouts = {"relax.nn.conv2d": ["NHWC", "HWIO"]}
    mod = relax.transform.ConvertLayout(layouts)(mod)
    return relax.transform.CanonicalizeBindings()(mod)


def channels_last_shuffles(mod: Any) -> Any:
    """Keep channel splits, concatenations and channel shuffles (ShuffleNet) channels-last.

    `to_nhwc` converts only convolutions: a shuffle (NCHW reshape to [1, g, C/g, H, W], swap of
    the two channel axes, reshape back) and the channel slices and concatenations around it stay
    NCHW between transposes, so every shuffle became a transposing copy and every 1x1 convolution
    after it a transposing read. Here each NCHW tensor that is a transpose of an NHWC one (or a
    channel slice, channel concatenation or shuffle of such tensors) gets its NHWC twin: the same
    op on the channels-last axis (the shuffle: reshape to [1, H, W, g, C/g], swap the last two
    axes, reshape back); a transpose back to NHWC becomes the twin itself, and the NCHW ops that
    nothing uses any more are dropped."""
    tvm, relax = _tvm()
    twin: dict[Any, Any] = {}     # NCHW var -> its NHWC equivalent
    defs: dict[Any, Any] = {}     # var -> bound value (for the shuffle's reshape/permute chain)

    def op_name(v: Any) -> str:
        return v.op.name if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) else ""

    def ints(e: Any) -> list[int] | None:
        try:
            return [int(x) for x in e]
        except (TypeError, ValueError):
            return None

    def shuffle_source(value: Any) -> tuple[Any, int] | None:
        """(NCHW source, groups) when `value` is reshape(permute(reshape(src, [1,g,C/g,H,W])))."""
        if op_name(value) != "relax.reshape" or len(_shape(value)) != 4:
            return None
        perm = defs.get(value.args[0])
        if op_name(perm) != "relax.permute_dims" or _attr_axes(perm.attrs, "axes") != [0, 2, 1, 3, 4]:
            return None
        split = defs.get(perm.args[0])
        if op_name(split) != "relax.reshape":
            return None
        src = split.args[0]
        n, c, h, w = _shape(value)
        five = _shape(split)
        if len(five) != 5 or _shape(src) != (n, c, h, w) or five[0] != n or five[3:] != (h, w) \
                or five[1] * five[2] != c:
            return None
        return src, five[1]

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        defs[var] = value
        name = op_name(value)
        if name == "relax.permute_dims" and len(_shape(value)) == 4:
            axes = _attr_axes(value.attrs, "axes")
            src = value.args[0]
            if axes == [0, 3, 1, 2]:
                twin[var] = src
            elif axes == [0, 2, 3, 1] and src in twin:
                env[var] = twin[src]
                return None
            return value
        if name == "relax.strided_slice" and value.args[0] in twin and ints(value.args[1]) == [1]:
            strides = value.args[4] if len(value.args) > 4 else None
            twin[var] = emit(relax.op.strided_slice(twin[value.args[0]], [3], value.args[2], value.args[3],
                                                    strides, bool(value.attrs.assume_inbound)), "slice_nhwc")
            return value
        if name == "relax.concat" and int(value.attrs.axis) == 1 and len(_shape(value)) == 4:
            fields = value.args[0].fields if isinstance(value.args[0], relax.Tuple) else None
            if fields is not None and all(f in twin for f in fields):
                twin[var] = emit(relax.op.concat([twin[f] for f in fields], axis=3), "concat_nhwc")
            return value
        found = shuffle_source(value)
        if found is not None and found[0] in twin:
            src, g = found
            n, c, h, w = _shape(value)
            x = emit(relax.op.reshape(twin[src], [n, h, w, g, c // g]), "shuffle_nhwc")
            x = emit(relax.op.permute_dims(x, [0, 1, 2, 4, 3]), "shuffle_nhwc")
            twin[var] = emit(relax.op.reshape(x, [n, h, w, c]), "shuffle_nhwc")
        return value

    return _rebuild_main(mod, rewrite)


def _group_anchor(mod: Any, func: Any) -> Any:
    """The anchor (first reduction) of a FuseOps group, analysed: None if it has none."""
    _, relax = _tvm()
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                info = analyze(mod[v.args[0]])
                if info.anchor is not None:
                    return info
    return None


def _merge_groups(mod: Any, mergeable: Callable[[Any, Any], bool], producers: set[str] | None = None) -> Any:
    """Merge FuseOps groups: each group whose result is used only by another group, where
    `mergeable(producer_info, consumer_info)` holds, is merged into that consumer (so FuseTIR
    makes one kernel of both). Infos are `schedules.analyze` of the groups' anchors (None for a
    group without a reduction). `producers`: only groups of these names may be merged."""
    tvm, relax = _tvm()
    main = mod["main"]
    uses = _use_counts(main)
    groups = {gv: f for gv, f in mod.functions.items()
              if isinstance(f, relax.Function) and f.attrs is not None and "Primitive" in f.attrs}
    kinds = {gv: _group_anchor(mod, f) for gv, f in groups.items()}
    bindings = [b for block in main.body.blocks for b in block.bindings]
    # operators that FuseOps left alone (a bare call_tir: an elementwise op, a conv without
    # epilogue) are groups of one
    for b in bindings:
        v = b.value
        if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir" and not _kept(mod, v):
            groups[b.var] = _single_call_group(v)
            info = analyze(mod[v.args[0]])
            kinds[b.var] = info if info.anchor is not None else None

    def group_key(binding: Any) -> Any:
        if binding.var in groups:
            return binding.var
        if isinstance(binding.value, relax.Call) and binding.value.op in groups:
            return binding.value.op
        return None
    producer = {b.var: b for b in bindings}
    pairs: dict[Any, tuple[Any, Any, int]] = {}   # consumer var -> (producer binding, consumer binding, arg)
    taken: set[Any] = set()
    for b in bindings:
        ckey = group_key(b)
        if ckey is None or b.var in taken:
            continue
        for j, arg in enumerate(_group_args(b, groups)):
            prev = producer.get(arg)
            if prev is None or uses.get(arg, 0) != 1 or prev.var in pairs or prev.var in taken:
                continue
            pkey = group_key(prev)
            if pkey is None or (producers is not None and _group_name(prev, groups) not in producers):
                continue
            if mergeable(kinds[pkey], kinds[ckey]):
                pairs[b.var] = (prev, b, j)
                taken |= {prev.var, b.var}
                break
    if not pairs:
        return mod

    bb = relax.BlockBuilder(mod)
    merged: dict[Any, Any] = {}
    for var, (pb_, cb, j) in pairs.items():
        fa, fb = groups[group_key(pb_)], groups[group_key(cb)]
        pa = [relax.Var(p.name, p.ty) for p in fa.params]
        pb = [relax.Var(p.name, p.ty) for k, p in enumerate(fb.params) if k != j]
        name = f"{_group_name(pb_, groups)}__{_group_name(cb, groups)}"
        with bb.function(name, pa + pb, attrs={"Primitive": True}, private=True):
            with bb.dataflow():
                a_out = _inline_group(bb, fa, dict(zip(fa.params, pa)))
                env = {p: v for p, v in zip([p for k, p in enumerate(fb.params) if k != j], pb)}
                env[fb.params[j]] = a_out
                out = bb.emit_output(_inline_group(bb, fb, env))
            gv = bb.emit_func_output(out)
        merged[var] = gv
    mod = bb.get()
    drop = {p.var for p, _, _ in pairs.values()}

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        if var in drop:
            return None
        if var in pairs:
            pb_, cb, j = pairs[var]
            args = _group_args(pb_, groups) + [a for k, a in enumerate(_group_args(cb, groups)) if k != j]
            return relax.Call(merged[var], [_substitute(a, env) for a in args])
        return _substitute(value, env)

    return _rebuild_main(mod, rewrite)


def fuse_depthwise_pointwise(mod: Any) -> Any:
    """Merge each depthwise-conv group (with its bias/activation epilogue) with the 1x1
    convolution group that is its only consumer (with its epilogue, residual add included) into
    one group, so that FuseTIR makes one kernel of them. The kernel's schedule then computes the
    depthwise output a few rows at a time into a small scratch buffer that the pointwise part
    consumes: the depthwise output tensor never exists in full.

    Runs between FuseOps and FuseTIR. Catches MobileNet V1 blocks, the dw->project part of
    MobileNet V2 / EfficientNet inverted residuals, Xception separable convolutions and
    ShuffleNet V2 branches."""
    return _merge_groups(mod, lambda a, b: a is not None and b is not None and a.kind == Kind.CONV_DW
                         and b.kind == Kind.CONV_PW and b.stride == (1, 1))


def fuse_input_transforms(mod: Any) -> Any:
    """Merge a purely elementwise group (the NCHW->NHWC transpose of the model input, above all)
    into the convolution that consumes it: the convolution then reads its padded row window
    straight from the untransformed tensor and the transformed copy never exists."""
    return _merge_groups(mod, lambda a, b: a is None and b is not None
                         and b.kind in (Kind.CONV, Kind.CONV_PW, Kind.CONV_DW))


def fuse_pinned_shifts(mod: Any) -> Any:
    """Merge each int8 zero-point shift (marked `ec.fuse_into_consumer`) left on its own into the
    kernel it feeds: an average pooling, a table lookup (int8 sigmoid), or the convolution a
    lookup was merged into: else it is a kernel of its own that stores an int32 tensor."""
    pinned = {gv.name_hint for gv, f in mod.functions.items()
              if f.attrs is not None and "ec.fuse_into_consumer" in f.attrs}
    if not pinned:
        return mod
    return _merge_groups(mod, lambda a, b: a is None, pinned)


def _group_args(binding: Any, groups: dict) -> list[Any]:
    """The tensors a group call (or a bare call_tir seen as a group) takes."""
    if binding.var in groups:
        return list(binding.value.args[1].fields)
    return list(binding.value.args)


def _group_name(binding: Any, groups: dict) -> str:
    return binding.value.args[0].name_hint if binding.var in groups else binding.value.op.name_hint


class _SingleCall:
    """A bare call_tir seen as a one-binding group (params = its tensor arguments)."""

    def __init__(self, call: Any) -> None:
        _, relax = _tvm()
        self.call = call
        # every argument, weights included, becomes a parameter (FuseTIR takes no constants)
        self.params = [relax.Var(a.name if isinstance(a, relax.Var) else f"w{i}", a.ty)
                       for i, a in enumerate(call.args[1].fields)]


def _single_call_group(call: Any) -> _SingleCall:
    return _SingleCall(call)


def _inline_group(bb: Any, func: Any, env: dict) -> Any:
    """Emit a FuseOps group's bindings into the current dataflow block; returns its result."""
    _, relax = _tvm()
    if isinstance(func, _SingleCall):
        c = func.call
        args = [env.get(p, p) for p in func.params]
        return bb.emit(relax.Call(c.op, [c.args[0], relax.Tuple(args)], c.attrs, c.ty_args), "elementwise")
    env = dict(env)
    for block in func.body.blocks:
        for b in block.bindings:
            env[b.var] = bb.emit(_substitute(b.value, env), b.var.name)
    result = func.body.body
    return env.get(result, result)


def prepare_graph(mod: Any) -> tuple[Any, dict[Any, tuple[float, int]]]:
    """Float graph rewrites: constants and BatchNorm folded, Clip canonical, NHWC, the
    quantize/dequantize pairs of a QDQ model removed. The result is still high-level Relax
    (conv2d, add, ...): what calibration runs and quantization rewrites. Also returns the
    (scale, zero point) a QDQ model gave its activations, by Relax var."""
    _, relax = _tvm()
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    mod = fold_constants(mod)
    mod = clip_calls_to_relax_ops(mod)
    mod = fold_affine_into_conv(mod)
    mod = to_nhwc(mod)
    mod = channels_last_shuffles(mod)
    mod = fold_constants(mod)
    mod, given = strip_qdq(mod)
    _check_no_quantize(mod)
    return mod, given


def _check_no_quantize(mod: Any) -> None:
    """Quantize/dequantize pairs with constant scales were removed; others (dynamic quantization,
    a lone QuantizeLinear) are not computed by our kernels."""
    tvm, relax = _tvm()
    for block in mod["main"].body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name in ("relax.quantize",
                                                                                          "relax.dequantize"):
                raise UnsupportedModelError(
                    f"{v.op.name} (result '{b.var.name}') is not a pair with constant scales: dynamic or lone "
                    "QuantizeLinear/DequantizeLinear is not supported; quantize with --quant int8 instead")


_SHAPE_OPS = ("relax.permute_dims", "relax.reshape")


def strip_qdq(mod: Any) -> tuple[Any, dict[Any, tuple[float, int]]]:
    """Remove `dequantize(quantize(x, s, z), s, z)` pairs (a QDQ model's activations): the
    float graph continues with x, and (s, z) is recorded for x and for the tensors x is a
    transposed/reshaped view of (layout conversion puts transposes around the pairs). Then
    back-to-back transposes that cancel are removed."""
    tvm, relax = _tvm()
    given: dict[Any, tuple[float, int]] = {}
    producer: dict[Any, Any] = {}
    quantized: dict[Any, Any] = {}     # quantize result var -> its input
    perms: dict[Any, tuple[Any, list[int]]] = {}

    def rewrite(var: Any, value: Any, env: dict, emit: Callable) -> Any:
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            name = value.op.name
            if name == "relax.quantize" and all(_is_const(a) for a in value.args[1:]):
                if _np(value.args[1]).size == 1:
                    quantized[var] = (value.args[0], float(_np(value.args[1]).reshape(())),
                                      int(_np(value.args[2]).reshape(())))
                    return value
            if name == "relax.dequantize" and value.args[0] in quantized:
                src, scale, zp = quantized[value.args[0]]
                x = src
                while True:     # the qparams hold for the views of x too
                    given[x] = (scale, zp)
                    p = producer.get(x)
                    if p is None or not (isinstance(p, relax.Call) and p.op.name in _SHAPE_OPS):
                        break
                    x = p.args[0]
                env[var] = src
                return None
            if name == "relax.permute_dims" and value.args[0] in perms:
                inner, axes = perms[value.args[0]]
                outer = _attr_axes(value.attrs, "axes")
                if outer is not None and [axes[a] for a in outer] == list(range(len(axes))):
                    env[var] = inner
                    return None
            if name == "relax.permute_dims" and _attr_axes(value.attrs, "axes") is not None:
                perms[var] = (value.args[0], _attr_axes(value.attrs, "axes"))
        producer[var] = value
        return value

    mod = _rebuild_main(mod, rewrite)
    return relax.transform.DeadCodeElimination()(mod), given


def _pin_to_consumers(mod: Any) -> Any:
    """Functions marked `ec.fuse_into_consumer` become opaque to FuseOps (op_pattern 8), so they
    stay separate calls that `fuse_input_transforms` then merges into the consuming conv; so do
    functions marked `ec.keep_call` (the patch rewrite's markers), which nothing merges."""
    from tvm import tirx

    for gv, f in list(mod.functions.items()):
        if isinstance(f, tirx.PrimFunc) and f.attrs is not None and \
                ("ec.fuse_into_consumer" in f.attrs or "ec.keep_call" in f.attrs):
            mod[gv] = f.with_attr("op_pattern", 8)
    return mod


def _legalize_where(bb: Any, call: Any) -> Any:
    """`where(cond, a, b)` as a select on the condition itself. TOPI's compares the condition
    widened to int64 with 0, which GCC 12 vectorizes wrongly with AVX-512 masks (PRelu's ONNX
    node tests gave wrong values); the plain select vectorizes right."""
    from tvm import te, tirx

    def where(cond: Any, a: Any, b: Any) -> Any:
        shape = [int(d) for d in call.ty.shape]

        def at(t: Any, idx: tuple) -> Any:
            dims = [int(d) for d in t.shape]
            lead = len(shape) - len(dims)
            return t[tuple(0 if d == 1 else idx[lead + i] for i, d in enumerate(dims))]

        def element(*idx: Any) -> Any:
            c = at(cond, idx)
            return tirx.Select(c if c.dtype == "bool" else c != tirx.const(0, c.dtype), at(a, idx), at(b, idx))

        return te.compute(shape, element, name="T_where")

    return bb.call_te(where, *call.args, primfunc_name_hint="where")


def _kept(mod: Any, call: Any) -> bool:
    """A call_tir of a function marked `ec.keep_call`."""
    f = mod[call.args[0]]
    return f.attrs is not None and "ec.keep_call" in f.attrs


def lower_graph(mod: Any, fuse_dwpw: bool = True) -> Any:
    """High-level Relax -> a `main` that calls only fused PrimFuncs (legalize, fuse, FuseTIR)."""
    tvm, relax = _tvm()
    legalize = relax.transform.LegalizeOps({"relax.where": _legalize_where})
    mod = tvm.transform.Sequential([legalize, relax.transform.AnnotateTIROpPattern()])(mod)
    mod = _pin_to_consumers(mod)
    mod = relax.transform.FuseOps()(mod)
    while True:   # chains of elementwise producers (transpose -> zero-point shift -> conv)
        before = len(mod.functions)
        mod = fuse_input_transforms(mod)
        if len(mod.functions) == before:
            break
    mod = fuse_pinned_shifts(mod)
    if fuse_dwpw:
        mod = fuse_depthwise_pointwise(mod)
    seq = tvm.transform.Sequential([
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
        relax.transform.RewriteDataflowReshape(),
        relax.transform.CanonicalizeBindings(),
    ])
    mod = seq(mod)
    _check_lowered(mod)
    return mod


def _check_lowered(mod: Any) -> None:
    """Every binding must now be a kernel call, a view (reshape) or a tuple access."""
    tvm, relax = _tvm()
    main = mod["main"]
    for block in main.body.blocks:
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
                if v.op.name in ("relax.call_tir", "relax.reshape", "relax.memory.view"):
                    continue
                raise UnsupportedModelError(
                    f"operator {v.op.name} (result '{b.var.name}') has no TIR lowering for our C backend"
                )
