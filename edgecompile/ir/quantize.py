"""int8 post-training quantization: calibration and the rewrite of the float graph into integer
Relax operators (TFLite's int8 scheme, after Jacob et al. 2018).

* weights: int8, symmetric, one scale per output channel; biases: int32 at scale s_in * s_w;
* activations: int8, asymmetric, one scale and zero point per tensor, from calibration
  (`minmax` or `percentile`: the 0.01% / 99.99% quantiles);
* every rescale is integer: y = clamp(z_out + ((acc * m0 + 2^(n-1)) >> n)) with m0 a Q31
  multiplier and n a per-channel shift — no float at run time, so host and device compute the
  same bytes;
* ReLU / ReLU6 / Clip become the bounds of the clamp; sigmoid (hence SiLU) is a 256-entry table.

How the rescale is computed (`requant_plan`): when every channel's shift n is in [32, 54] (all
multipliers below 1/2 and above 2^-23: the usual case) the constant terms — bias, the zero-point
correction of unpadded convolutions, the rounding 2^(n-1) and z_out * 2^n — are folded into one
64-bit constant per channel and the rest is what a 32-bit core does in a few instructions:

    y = clamp((int32)((acc * m0 + rnd) >> 32) >> (n - 32))      (SMLAL + ASR + SSAT on ARM)

and activation bounds move behind the rescale (it is monotonic, so clamping before or after gives
the same bytes). It is the same integer function as the general form, which stays for the other
shifts (see `requantize_fast_reference` and its test).

The rewrite runs on the high-level graph (`passes.prepare_graph`), before legalization, so the
integer graph then goes through the same fusion, scheduling and C generation as float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..errors import EdgeCompileError, UnsupportedModelError
from . import operators

QMIN, QMAX = -128, 127


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int

    def quantize(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.round(x / self.scale) + self.zero_point, QMIN, QMAX).astype(np.int8)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (q.astype(np.float32) - self.zero_point) * np.float32(self.scale)


def qparams_from_range(lo: float, hi: float) -> QParams:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / (QMAX - QMIN)
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return QParams(scale, zp)


# ----------------------------------------------------------------------------- fixed point


def requant_params(multiplier: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Real multipliers M > 0 -> (m0, n) with M ~= m0 / 2^n, m0 in [2^30, 2^31) (Q31), n in
    [1, 62]. Multipliers too small for that range give m0 = 0 (the output is then z_out)."""
    m = np.atleast_1d(np.asarray(multiplier, dtype=np.float64))
    m0 = np.zeros(m.shape, np.int64)
    n = np.full(m.shape, 31, np.int64)
    for i, v in enumerate(m):
        if not v > 0:
            continue
        f, e = math.frexp(v)                 # v = f * 2^e, f in [0.5, 1)
        q = int(round(f * (1 << 31)))
        if q == 1 << 31:
            q //= 2
            e += 1
        shift = 31 - e
        if shift > 62:                       # below 2^-32: rounds to nothing
            continue
        if shift < 1:
            raise EdgeCompileError(f"requantization multiplier {v} is too large")
        m0[i], n[i] = q, shift
    return m0, n


def requantize_reference(acc: np.ndarray, m0: np.ndarray, n: np.ndarray, zero_point: int) -> np.ndarray:
    """What the generated code computes, in exact integer arithmetic (Python ints)."""
    acc = np.asarray(acc, dtype=object)
    out = (acc * m0.astype(object) + (np.int64(1) << (n - 1)).astype(object)) >> n.astype(object)
    return np.clip(out + zero_point, QMIN, QMAX).astype(np.int8)


FAST_SHIFTS = (32, 54)     # shifts n the folded 32-bit form handles exactly (see requant_plan)
SATURATE_S8 = "ec_sat_s8"  # C helper: an int32 clamped to [-128, 127] (SSAT on ARM; schedules.ukernels.HELPERS)


@dataclass(frozen=True)
class RequantPlan:
    """The folded form of y = clamp(z + (((acc + offset) * m0 + 2^(n-1)) >> n)) for one tensor
    (arrays over the last axis, or 0-d): y = clamp((int32)((acc * m0 + rnd) >> 32) >> r)."""

    m0: np.ndarray       # int32
    rnd: np.ndarray      # int64: offset * m0 + 2^(n-1) + z * 2^n
    r: np.ndarray        # int32: n - 32


def requant_plan(m0: np.ndarray, n: np.ndarray, offset: np.ndarray | int, zero_point: int) -> RequantPlan | None:
    """The folded constants, or None when some shift is outside FAST_SHIFTS (then the general
    64-bit form is used). Exact: with n >= 32, floor(x / 2^n) = floor(floor(x / 2^32) / 2^(n-32)),
    and adding z * 2^n before the shift adds z after it; with n <= 54 every constant and the sum
    fit in 64 bits and the high word in 32 (|acc + offset| < 2^31, m0 < 2^31)."""
    m0, n, off = np.broadcast_arrays(np.asarray(m0, np.int64), np.asarray(n, np.int64), np.asarray(offset, np.int64))
    n = np.where(m0 == 0, 32, n)      # m0 = 0: any shift gives 0; use 32
    if n.size == 0 or n.min() < FAST_SHIFTS[0] or n.max() > FAST_SHIFTS[1]:
        return None
    rnd = [int(o) * int(m) + (1 << (int(k) - 1)) + zero_point * (1 << int(k))
           for o, m, k in zip(np.ravel(off), np.ravel(m0), np.ravel(n))]
    return RequantPlan(m0.astype(np.int32), np.array(rnd, np.int64).reshape(m0.shape), (n - 32).astype(np.int32))


def requantize_fast_reference(acc: np.ndarray, plan: RequantPlan) -> np.ndarray:
    """What the folded form computes (before the final clamp), in exact integer arithmetic, with the
    32-bit truncation of the high word made explicit."""
    acc = np.asarray(acc, dtype=object)
    hi = (acc * plan.m0.astype(object) + plan.rnd.astype(object)) >> 32
    assert all(-(2**31) <= int(v) < 2**31 for v in np.ravel(hi)), "high word outside int32"
    return hi >> plan.r.astype(object)


# ----------------------------------------------------------------------------- calibration


def _bindings(func: Any) -> list[Any]:
    return [b for block in func.body.blocks for b in block.bindings]


def calibrate(mod: Any, samples: np.ndarray, method: str = "minmax") -> dict[Any, tuple[float, float]]:
    """Run the float graph on `samples` (N x input shape) on this machine and return the value
    range of the input and of every intermediate tensor, keyed by Relax var."""
    import tvm
    from tvm import relax

    from .passes import _substitute

    if method not in ("minmax", "percentile"):
        raise EdgeCompileError(f"unknown calibration method {method!r}: use minmax or percentile")
    main = mod["main"]
    binds = [b for b in _bindings(main) if isinstance(b.var.ty, relax.TensorType)]
    bb = relax.BlockBuilder()
    params = [relax.Var(p.name, p.ty) for p in main.params]
    with bb.function("main", params):
        with bb.dataflow():
            env = dict(zip(main.params, params))
            outs = []
            for b in _bindings(main):
                v = bb.emit(_substitute(b.value, env), b.var.name)
                env[b.var] = v
                if b in binds:
                    outs.append(v)
            gv = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(gv)
    exe = tvm.compile(bb.get(), target=tvm.target.Target({"kind": "llvm"}))
    vm = relax.VirtualMachine(exe, tvm.cpu())
    keys = [main.params[0]] + [b.var for b in binds]
    # minmax keeps a running range per tensor (every intermediate of every sample kept took ~14 GB
    # for MobileNet V2 1.0/224 and 100 samples); percentile needs the values themselves
    keep = method != "minmax"
    values: dict[Any, list[np.ndarray]] = {k: [] for k in keys}
    lo: dict[Any, float] = {}
    hi: dict[Any, float] = {}

    def see(k: Any, v: np.ndarray) -> None:
        if v.size:
            lo[k] = min(lo.get(k, np.inf), float(v.min()))
            hi[k] = max(hi.get(k, -np.inf), float(v.max()))
        if keep:
            values[k].append(v)

    for x in samples:
        x = np.ascontiguousarray(x[None] if x.ndim == len(main.params[0].ty.shape) - 1 else x, dtype=np.float32)
        res = vm["main"](tvm.runtime.tensor(x))
        see(main.params[0], x.ravel())
        for k, r in zip(keys[1:], res):
            see(k, r.numpy().ravel())
    ranges = {}
    for k in keys:
        if not keep or sum(v.size for v in values[k]) < 100:
            ranges[k] = (lo[k], hi[k])
        else:
            v = np.concatenate(values[k]).astype(np.float64)
            ranges[k] = (float(np.quantile(v, 1e-4)), float(np.quantile(v, 1 - 1e-4)))
    return ranges


# ----------------------------------------------------------------------------- the rewrite


@dataclass
class _Q:          # an int8 tensor
    expr: Any
    qp: QParams


@dataclass
class _Acc:
    """An int32 accumulator at scale `scale` (per last-axis channel or scalar), zero point 0.
    Constants not yet applied (folded into the rescale when it is materialized): `offset`, an
    int32 to add (bias, zero-point correction), then `bounds`, [("max" | "min", int32 bound)] in
    order (ReLU, ReLU6, Clip) on acc + offset."""

    expr: Any
    scale: np.ndarray
    offset: np.ndarray | None = None
    bounds: tuple = ()


def _const(value: Any, dtype: str) -> Any:
    from tvm import relax

    return relax.const(np.array(value, dtype=dtype), dtype)


class _Quantizer:
    def __init__(self, mod: Any, ranges: dict[Any, tuple[float, float]],
                 given: dict[Any, tuple[float, int]] | None = None) -> None:
        from tvm import relax

        self.relax = relax
        self.mod = mod
        self.ranges = ranges
        self.given = given or {}
        self.bb = relax.BlockBuilder()
        self.env: dict[Any, Any] = {}
        self.pinned: set[str] = set()
        self.materialized: dict[tuple[int, QParams], tuple[_Acc, _Q]] = {}   # see as_q

    def qp(self, var: Any) -> QParams:
        if var in self.given:                      # a QDQ model's own scale and zero point
            scale, zp = self.given[var]
            return QParams(scale, zp)
        if var not in self.ranges:
            raise EdgeCompileError(f"int8: no calibration range for '{var.name}'")
        return qparams_from_range(*self.ranges[var])

    def emit(self, expr: Any, name: str = "q") -> Any:
        return self.bb.emit(expr, name)

    # -- conversions
    def flush(self, value: _Acc) -> _Acc:
        """The accumulator with its pending offset and bounds applied as graph operators."""
        op = self.relax.op
        expr = value.expr
        if value.offset is not None:
            expr = self.emit(op.add(expr, _const(value.offset, "int32")))
        for kind, bound in value.bounds:
            expr = self.emit((op.maximum if kind == "max" else op.minimum)(expr, _const(bound, "int32")))
        return _Acc(expr, value.scale)

    def materialize(self, value: Any, qp: QParams) -> _Q:
        """An accumulator (or an int8 tensor at another scale) requantized to `qp`."""
        op = self.relax.op
        if isinstance(value, _Q):
            if value.qp == qp:
                return value
            acc = self.emit(op.subtract(op.astype(value.expr, "int32"), _const(value.qp.zero_point, "int32")))
            value = _Acc(acc, np.array(value.qp.scale))
        m0, n = requant_params(np.asarray(value.scale, np.float64) / qp.scale)
        if m0.size == 1:
            m0, n = m0.reshape(()), n.reshape(())
        plan = requant_plan(m0, n, 0 if value.offset is None else value.offset, qp.zero_point)
        if plan is not None:
            return _Q(self.emit(self.requant_folded(value, plan, m0, n, qp.zero_point)), qp)
        value = self.flush(value)
        t = self.emit(op.multiply(op.astype(value.expr, "int64"), _const(m0, "int64")))
        t = self.emit(op.add(t, _const(np.left_shift(np.int64(1), n - 1), "int64")))
        t = self.emit(op.right_shift(t, _const(n, "int64")))
        t = self.emit(op.add(t, _const(qp.zero_point, "int64")))
        t = self.emit(op.minimum(op.maximum(t, _const(QMIN, "int64")), _const(QMAX, "int64")))
        return _Q(self.emit(op.astype(t, "int8")), qp)

    def requant_folded(self, value: _Acc, plan: RequantPlan, m0: np.ndarray, n: np.ndarray, zp: int) -> Any:
        """One TE function: acc -> int8 by the folded form of `plan`, then the pending bounds
        (moved behind the monotonic rescale: each becomes the rescaled bound, per channel or, when
        all channels agree, one number) and the int8 range."""
        import tvm
        from tvm import te

        def rescaled(bound: np.ndarray) -> np.ndarray:
            """z + ((bound * m0 + 2^(n-1)) >> n), exact, per channel: the bound after the rescale."""
            b, m, k = np.broadcast_arrays(np.asarray(bound, np.int64), m0, n)
            exact = [(int(x) * int(y) + (1 << (int(e) - 1))) >> int(e) for x, y, e in zip(b.ravel(), m.ravel(), k.ravel())]
            return np.clip(np.array(exact, np.int64).reshape(b.shape) + zp, -(2**31), 2**31 - 1).astype(np.int32)

        steps = []
        for kind, bound in value.bounds:
            r = rescaled(bound)
            r = np.asarray(np.ravel(r)[0]) if r.size and (r == np.ravel(r)[0]).all() else r
            if r.ndim == 0 and ((kind == "max" and int(r) <= QMIN) or (kind == "min" and int(r) >= QMAX)):
                continue          # the int8 range bounds it anyway
            steps.append((kind, r))
        per_channel = [plan.m0, plan.rnd, plan.r] if plan.m0.ndim else []
        arrays = per_channel + [b for _, b in steps if b.ndim]
        consts = [_const(a, str(a.dtype)) for a in arrays]

        def f(acc: Any, *tensors: Any) -> Any:
            it = iter(tensors)
            m0_t, rnd_t, r_t = (next(it), next(it), next(it)) if per_channel else (None, None, None)
            bound_t = [next(it) if b.ndim else None for _, b in steps]

            def at(t: Any, scalar: np.ndarray, dtype: str, c: Any) -> Any:
                return t[c] if t is not None else tvm.tirx.const(int(scalar), dtype)

            def body(*i: Any) -> Any:
                c = i[-1]
                prod = acc(*i).astype("int64") * at(m0_t, plan.m0, "int32", c).astype("int64") + \
                    at(rnd_t, plan.rnd, "int64", c)
                t = (prod >> tvm.tirx.const(32, "int64")).astype("int32")
                if per_channel or int(plan.r):
                    t = t >> at(r_t, plan.r, "int32", c)
                for (kind, b), bt in zip(steps, bound_t):
                    t = (tvm.tirx.max if kind == "max" else tvm.tirx.min)(t, at(bt, b, "int32", c))
                return tvm.tirx.call_extern("int8", SATURATE_S8, t)

            return te.compute(acc.shape, body, name="requant")

        return self.bb.call_te(f, value.expr, *consts, primfunc_name_hint="ec_requant")

    def as_q(self, value: Any, var_for_scale: Any) -> _Q:
        """The int8 tensor of an operand. An accumulator is requantized once for all its int8
        consumers: requantizing it again for each (a block output read by the residual add and by
        the next block) would leave the accumulator with several consumers, so FuseOps could fuse
        the rescale into none of them but each consumer, and the producing kernel would store int32
        (4x the bytes) in the arena."""
        if isinstance(value, _Q):
            return value
        if isinstance(value, _Acc):
            qp = self.qp(var_for_scale)
            key = (id(value), qp)
            if key not in self.materialized:
                self.materialized[key] = (value, self.materialize(value, qp))   # value kept: its id stays unique
            return self.materialized[key][1]
        raise UnsupportedModelError("int8: a constant where an activation was expected")

    def sum_int32(self, x: Any, axes: list[int], keepdims: bool) -> Any:
        """The int32 sum of int8 values over `axes`, the widening inside the reduction: as
        `sum(astype(x, int32))`, FuseOps joins the cast to the kernel producing x, which then
        stores int32 (4x the bytes: 3x3x1280 of MobileNet V2's last conv at 80x80 is 46 KB, the
        network's peak RAM under patches) for the pooling to read."""
        from tvm import te

        def widened_sum(t: Any) -> Any:
            ndim = len(t.shape)
            red = [te.reduce_axis((0, t.shape[a]), name=f"r{a}") for a in axes]

            def body(*i: Any) -> Any:
                idx, k, j = [], 0, 0
                for a in range(ndim):
                    if a in axes:
                        idx.append(red[k])
                        k += 1
                        j += keepdims
                    else:
                        idx.append(i[j])
                        j += 1
                return te.sum(t(*idx).astype("int32"), axis=red)

            shape = [1 if a in axes else t.shape[a] for a in range(ndim) if keepdims or a not in axes]
            return te.compute(shape, body, name="widened_red")     # a sum block (operators._RED)

        return self.bb.call_te(widened_sum, x, primfunc_name_hint="sum")

    def add_acc(self, qa: _Q, qb: _Q, twice_max: float, shape: list[int]) -> Any:
        """The int32 sum of two int8 tensors (broadcast) at scale twice_max / 2^20, as one TE
        function reading the int8 operands: each operand widened, zero point off, shifted left by
        20 bits (int64) and rescaled to the common scale (m0, n), then added. As a chain of Relax
        operators per operand, FuseOps fused one operand's chain into its producer (a skip
        branch's conv in Xception), which then stored the int64 term (8x the int8 bytes)."""
        import tvm
        from tvm import te

        terms = []
        for operand in (qa, qb):
            m0, n = requant_params(operand.qp.scale / twice_max)
            terms.append((int(operand.qp.zero_point), int(m0[0]), int(n[0])))

        def f(a: Any, b: Any) -> Any:
            def at(t: Any, idx: tuple) -> Any:
                dims = [int(d) for d in t.shape]
                lead = len(shape) - len(dims)
                # an axis of 1 against a longer one is broadcast; else the same index (elementwise for FuseOps)
                return t[tuple(0 if d == 1 != shape[lead + i] else idx[lead + i] for i, d in enumerate(dims))]

            def term(x: Any, zp: int, m0: int, n: int) -> Any:
                c = lambda v, dt: tvm.tirx.const(v, dt)  # noqa: E731
                w = (x.astype("int32") - c(zp, "int32")).astype("int64") << c(20, "int64")
                return (w * c(m0, "int64") + c(1 << (n - 1), "int64")) >> c(n, "int64")

            def body(*i: Any) -> Any:
                return (term(at(a, i), *terms[0]) + term(at(b, i), *terms[1])).astype("int32")

            return te.compute(shape, body, name="add_acc")

        return self.bb.call_te(f, qa.expr, qb.expr, primfunc_name_hint="ec_add_acc")

    def zero_point_shift(self, x: _Q, dtype: str = "int16", zp: int | None = None) -> Any:
        """dtype(x) - zero point (or `zp`) as its own TIR function marked to fuse into its consumer
        (a convolution, an average pooling, a table lookup): left to FuseOps, it would join the
        producing kernel, or be a kernel of its own, and a tensor of int16 (int32) would be stored."""
        from tvm import te

        zp = x.qp.zero_point if zp is None else zp

        def shift(t: Any) -> Any:
            return te.compute(t.shape, lambda *i: t(*i).astype(dtype) - te.const(zp, dtype), name="zp_shift")

        call = self.bb.call_te(shift, x.expr, primfunc_name_hint="ec_zp_shift")
        gv = call.args[0]
        self.pinned.add(gv.name_hint)
        return self.emit(call)

    # -- the walk
    def run(self) -> tuple[Any, QParams, QParams]:
        relax = self.relax
        main = self.mod["main"]
        if len(main.params) != 1:
            raise UnsupportedModelError("int8: models with one input only")
        p = main.params[0]
        in_qp = self.qp(p)
        q_in = relax.Var(p.name, relax.TensorType(p.ty.shape, "int8"))
        self.origin: dict[Any, Any] = {}     # value -> the float var it stands for
        with self.bb.function("main", [q_in]):
            with self.bb.dataflow():
                self.env[p] = _Q(q_in, in_qp)
                last_var = p
                for b in _bindings(main):
                    self.env[b.var] = self.rewrite(b.var, b.value)
                    last_var = b.var
                result = main.body.body
                out_var = result if result in self.env else last_var
                out = self.as_q(self.env[out_var], out_var)
                out_qp = out.qp
                gv = self.bb.emit_output(out.expr)
            self.bb.emit_func_output(gv)
        mod = self.bb.get()
        for gv, f in list(mod.functions.items()):
            if gv.name_hint in self.pinned:
                mod[gv] = f.with_attr("ec.fuse_into_consumer", True)
        return mod, in_qp, out_qp

    def get(self, e: Any) -> Any:
        import tvm

        if isinstance(e, tvm.ir.expr.Constant):
            return e
        if e in self.env:
            return self.env[e]
        raise UnsupportedModelError(f"int8: unknown operand {e}")

    def rewrite(self, var: Any, value: Any) -> Any:
        import tvm

        relax, op = self.relax, self.relax.op
        if isinstance(value, relax.Var):
            return self.get(value)
        if isinstance(value, relax.TupleGetItem):
            return self.get(value.tuple_value)[value.index]
        if not (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op)):
            raise UnsupportedModelError(f"int8: cannot quantize binding '{var.name}'")
        name = value.op.name
        op = operators.lookup(name)
        rule = RULES.get(op.int8) if op is not None and op.int8 else None
        if rule is None:
            raise UnsupportedModelError(f"int8: operator {name} (result '{var.name}') has no integer version yet")
        return rule(self, var, value, list(value.args))


# ---- int8 rules: layout / shape operators: int8 in, int8 out, same scale
def _passthrough(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    relax = q.relax
    x = q.as_q(q.get(args[0]), args[0])
    new = relax.Call(value.op, [x.expr, *args[1:]], value.attrs, value.ty_args)
    return _Q(q.emit(new), x.qp)


def _split(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    relax = q.relax
    x = q.as_q(q.get(args[0]), args[0])
    parts = q.emit(relax.Call(value.op, [x.expr, *args[1:]], value.attrs, value.ty_args))
    n = len(var.ty.fields)
    return [_Q(q.emit(relax.TupleGetItem(parts, i)), x.qp) for i in range(n)]


# ---- int8 rules: convolutions and dense layers
def _weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (last axis) symmetric int8 weights and their scales."""
    amax = np.abs(w.reshape(-1, w.shape[-1])).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def _conv2d(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    relax, op = q.relax, q.relax.op
    attrs = value.attrs
    if str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "HWIO":
        raise UnsupportedModelError(f"int8: conv '{var.name}' is not NHWC/HWIO")
    x = q.as_q(q.get(args[0]), args[0])
    w = args[1]
    if not hasattr(w, "value"):
        raise UnsupportedModelError(f"int8: conv '{var.name}' has non-constant weights")
    wq, ws = _weights(w.value.numpy())
    padded = any(int(p) for p in attrs.padding)
    kwargs = dict(strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=attrs.groups,
                  data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32")
    if padded:
        # zero padding must mean the real value 0: subtract the zero point first (int16). The
        # shift is pinned to the convolution (see zero_point_shift), never materialised.
        xs = q.zero_point_shift(x)
        acc = q.emit(op.nn.conv2d(xs, relax.const(wq), **kwargs))
    else:
        acc = q.emit(op.nn.conv2d(x.expr, relax.const(wq), **kwargs))
        wsum = wq.astype(np.int64).sum(axis=(0, 1, 2))          # per output channel (HWIO)
        corr = (-x.qp.zero_point * wsum).astype(np.int32)
        return _Acc(acc, x.qp.scale * ws, corr if np.any(corr) else None)
    return _Acc(acc, x.qp.scale * ws)


def _matmul(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    relax, op = q.relax, q.relax.op
    x = q.as_q(q.get(args[0]), args[0])
    if not hasattr(args[1], "value"):
        raise UnsupportedModelError(f"int8: matmul '{var.name}' has non-constant weights")
    wq, ws = _weights(args[1].value.numpy())
    acc = q.emit(op.matmul(x.expr, relax.const(wq), out_dtype="int32"))
    corr = (-x.qp.zero_point * wq.astype(np.int64).sum(axis=0)).astype(np.int32)
    return _Acc(acc, x.qp.scale * ws, corr if np.any(corr) else None)


# ---- int8 rules: elementwise
def _add(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    op = q.relax.op
    a, b = q.get(args[0]), q.get(args[1])
    if hasattr(a, "value") and not hasattr(b, "value"):
        a, b = b, a
    if hasattr(b, "value"):
        c = b.value.numpy().astype(np.float64)
        if isinstance(a, _Acc):        # a bias: into the accumulator at its scale
            bias = np.round(c / np.broadcast_to(a.scale, c.shape[-1:] if c.ndim else ())).astype(np.int32)
            if a.bounds:               # a bias after a bound: the bound is applied first
                a = q.flush(a)
            if c.ndim > 1 and any(d != 1 for d in c.shape[:-1]):
                return _Acc(q.emit(op.add(q.flush(a).expr, _const(bias, "int32"))), a.scale)
            bias = bias.reshape(bias.shape[-1:])
            offset = bias if a.offset is None else (a.offset.astype(np.int64) + bias).astype(np.int32)
            return _Acc(a.expr, a.scale, offset)
        raise UnsupportedModelError(f"int8: add of a constant to '{args[0]}' ({var.name})")
    out_qp = q.qp(var)
    qa, qb = q.as_q(a, args[0]), q.as_q(b, args[1])
    # both operands to a common scale with 20 extra bits, summed, then to the output scale
    twice_max = 2 * max(qa.qp.scale, qb.qp.scale)
    acc = q.emit(q.add_acc(qa, qb, twice_max, [int(d) for d in var.ty.shape]))
    return q.materialize(_Acc(acc, np.array(twice_max / (1 << 20))), out_qp)


def _bound(q: _Quantizer, x: Any, const: Any, fn: Callable) -> Any:
    c = float(np.asarray(const.value.numpy()).reshape(-1)[0])
    if isinstance(x, _Acc):
        bound = np.round(c / np.asarray(x.scale, np.float64))
        bound = np.clip(bound, -(2**31), 2**31 - 1).astype(np.int32)
        kind = "max" if fn is q.relax.op.maximum else "min"
        return _Acc(x.expr, x.scale, x.offset, x.bounds + ((kind, bound),))
    qb = int(np.clip(round(c / x.qp.scale) + x.qp.zero_point, QMIN, QMAX))
    return _Q(q.emit(fn(x.expr, _const(qb, "int8"))), x.qp)


def _maximum(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    if not hasattr(args[1], "value"):
        raise UnsupportedModelError(f"int8: elementwise maximum of two tensors ({var.name})")
    return _bound(q, q.get(args[0]), args[1], q.relax.op.maximum)


def _minimum(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    if not hasattr(args[1], "value"):
        raise UnsupportedModelError(f"int8: elementwise minimum of two tensors ({var.name})")
    return _bound(q, q.get(args[0]), args[1], q.relax.op.minimum)


def _relu(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    from tvm import relax

    return _bound(q, q.get(args[0]), relax.const(np.float32(0.0)), q.relax.op.maximum)


def _sigmoid(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    op = q.relax.op
    x = q.as_q(q.get(args[0]), args[0])
    out_qp = QParams(1.0 / 256.0, -128)          # the sigmoid's range, fixed as in TFLite
    real = (np.arange(QMIN, QMAX + 1) - x.qp.zero_point) * x.qp.scale
    table = out_qp.quantize(1.0 / (1.0 + np.exp(-real)))
    idx = q.zero_point_shift(x, "int32", QMIN)      # x + 128, computed inside the lookup's kernel
    return _Q(q.emit(op.take(q.relax.const(table), idx, axis=0)), out_qp)


def _multiply(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    op = q.relax.op
    a, b = q.get(args[0]), q.get(args[1])
    if hasattr(a, "value") or hasattr(b, "value"):
        raise UnsupportedModelError(f"int8: multiply by a constant ({var.name})")
    qa, qb = q.as_q(a, args[0]), q.as_q(b, args[1])
    xa = q.emit(op.subtract(op.astype(qa.expr, "int32"), _const(qa.qp.zero_point, "int32")))
    xb = q.emit(op.subtract(op.astype(qb.expr, "int32"), _const(qb.qp.zero_point, "int32")))
    acc = q.emit(op.multiply(xa, xb))
    return q.materialize(_Acc(acc, np.array(qa.qp.scale * qb.qp.scale)), q.qp(var))


# ---- int8 rules: reductions and pooling
def _mean(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    op = q.relax.op
    x = q.as_q(q.get(args[0]), args[0])
    axes = [int(a) for a in value.attrs.axis]
    shape = [int(d) for d in args[0].ty.shape]
    count = int(np.prod([shape[a] for a in axes]))
    s = q.emit(q.sum_int32(x.expr, axes, bool(value.attrs.keepdims)))
    s = q.emit(op.add(s, _const(-count * x.qp.zero_point, "int32")))
    return q.materialize(_Acc(s, np.array(x.qp.scale / count)), q.qp(var))


def _avg_pool2d(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    op = q.relax.op
    x = q.as_q(q.get(args[0]), args[0])
    xs = q.zero_point_shift(x, "int32")      # inside the pooling kernel (passes.fuse_input_transforms)
    a = value.attrs
    pooled = q.emit(op.nn.avg_pool2d(
        xs, pool_size=a.pool_size, strides=a.strides, padding=a.padding, dilation=a.dilation,
        ceil_mode=bool(a.ceil_mode), count_include_pad=bool(a.count_include_pad),
        layout=str(a.layout), out_layout=str(a.out_layout)))
    return q.materialize(_Acc(pooled, np.array(x.qp.scale)), q.qp(var))


def _concat(q: _Quantizer, var: Any, value: Any, args: list[Any]) -> Any:
    from tvm import relax

    op = q.relax.op
    out_qp = q.qp(var)
    fields = args[0].fields if isinstance(args[0], relax.Tuple) else q.get(args[0])
    parts = [q.materialize(q.as_q(q.get(f), f), out_qp).expr for f in fields]
    return _Q(q.emit(op.concat(parts, axis=int(value.attrs.axis))), out_qp)

# rule name (operators.Operator.int8) -> rule(quantizer, float var, float value, args) -> _Q | _Acc | list
RULES: dict[str, Callable[..., Any]] = {
    "passthrough": _passthrough, "split": _split, "conv2d": _conv2d, "matmul": _matmul, "add": _add,
    "maximum": _maximum, "minimum": _minimum, "relu": _relu, "sigmoid": _sigmoid, "multiply": _multiply,
    "mean": _mean, "avg_pool2d": _avg_pool2d, "concat": _concat,
}


def quantize_graph(mod: Any, ranges: dict[Any, tuple[float, float]],
                   given: dict[Any, tuple[float, int]] | None = None) -> tuple[Any, QParams, QParams]:
    """The float high-level graph -> the int8 graph; returns it with the input/output qparams.
    `given` (by var) overrides calibration: the scales of an already-quantized model."""
    return _Quantizer(mod, ranges, given).run()
