"""The executor's view of a model: tensors, constant weights and an ordered list of kernel calls.

`extract_program` walks the dataflow bindings of the lowered Relax `main` (see passes.py); the
result is plain data that the memory planner and the C emitter consume, independent of TVM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import UnsupportedModelError

DTYPE_BYTES = {"float32": 4, "int32": 4, "int8": 1, "uint8": 1, "int16": 2, "bool": 1, "int64": 8, "float16": 2}
C_TYPES = {"float32": "float", "int32": "int32_t", "int8": "int8_t", "uint8": "uint8_t",
           "int16": "int16_t", "bool": "int8_t", "int64": "int64_t", "float16": "uint16_t"}


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str                      # input | output | activation | weight | scratch
    alias_of: str | None = None    # a view (reshape) of another tensor's storage
    packed: int | None = None      # weights stored as panels of this many output channels

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_BYTES[self.dtype]


@dataclass
class KernelCall:
    kernel: str                    # PrimFunc name in the module
    inputs: list[str]              # tensor names (activations and weights), PrimFunc order
    outputs: list[str]
    scratch: list[str] = field(default_factory=list)   # filled by codegen from the kernel's needs


@dataclass
class Program:
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Tensor]
    weights: dict[str, np.ndarray]
    calls: list[KernelCall]

    def storage_root(self, name: str) -> str:
        while self.tensors[name].alias_of is not None:
            name = self.tensors[name].alias_of  # type: ignore[assignment]
        return name


def _sanitize(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def extract_program(mod: Any) -> Program:
    import tvm
    from tvm import relax

    main = mod["main"]
    tensors: dict[str, Tensor] = {}
    weights: dict[str, np.ndarray] = {}
    weight_by_hash: dict[bytes, str] = {}
    env: dict[Any, Any] = {}   # relax var -> tensor name, or tuple of names
    calls: list[KernelCall] = []
    used_names: set[str] = set()

    def fresh(base: str) -> str:
        base = _sanitize(base)
        name, i = base, 1
        while name in used_names:
            i += 1
            name = f"{base}_{i}"
        used_names.add(name)
        return name

    def ty_of(ty: Any) -> tuple[tuple[int, ...], str]:
        try:
            return tuple(int(d) for d in ty.shape), str(ty.dtype)
        except (TypeError, ValueError, AttributeError):
            raise UnsupportedModelError(f"tensor of type {ty} has no static shape") from None

    for i, p in enumerate(main.params):
        shape, dtype = ty_of(p.ty)
        name = fresh(f"input{i}" if len(main.params) > 1 else "input")
        tensors[name] = Tensor(name, shape, dtype, "input")
        env[p] = name

    def weight(c: Any) -> str:
        arr = np.array(c.value.numpy(), order="C")
        key = hashlib.sha256(arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes()).digest()
        if key in weight_by_hash:
            return weight_by_hash[key]
        name = fresh(f"w{len(weights)}")
        weights[name] = arr
        weight_by_hash[key] = name
        tensors[name] = Tensor(name, tuple(arr.shape), str(arr.dtype), "weight")
        return name

    def arg(e: Any) -> str:
        if isinstance(e, tvm.ir.expr.Constant):
            return weight(e)
        if e in env and isinstance(env[e], str):
            return env[e]
        raise UnsupportedModelError(f"unsupported kernel argument {type(e).__name__}")

    for block in main.body.blocks:
        for b in block.bindings:
            v, var = b.value, b.var
            if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir":
                gv, args = v.args[0], v.args[1]
                ins = [arg(a) for a in args.fields]
                out_tys = v.ty_args[0]
                fields = list(out_tys.fields) if isinstance(out_tys, relax.TupleType) else [out_tys]
                outs = []
                for j, ty in enumerate(fields):
                    shape, dtype = ty_of(ty)
                    name = fresh(var.name if len(fields) == 1 else f"{var.name}_{j}")
                    tensors[name] = Tensor(name, shape, dtype, "activation")
                    outs.append(name)
                calls.append(KernelCall(gv.name_hint, ins, outs))
                env[var] = outs[0] if len(fields) == 1 else tuple(outs)
            elif isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.reshape":
                base = arg(v.args[0])
                shape, dtype = ty_of(var.ty)
                name = fresh(var.name)
                tensors[name] = Tensor(name, shape, dtype, "activation", alias_of=base)
                env[var] = name
            elif isinstance(v, relax.TupleGetItem):
                env[var] = env[v.tuple_value][v.index]
            elif isinstance(v, relax.Tuple):
                env[var] = tuple(arg(f) for f in v.fields)
            elif isinstance(v, relax.Var):
                env[var] = env[v]
            elif isinstance(v, tvm.ir.expr.Constant):
                env[var] = weight(v)
            else:
                raise UnsupportedModelError(f"binding '{var.name}' ({type(v).__name__}) cannot be executed")

    result = main.body.body
    outs = env.get(result)
    if outs is None and isinstance(result, relax.Tuple):
        outs = tuple(arg(f) for f in result.fields)
    outs = [outs] if isinstance(outs, str) else list(outs)
    for o in outs:
        t = tensors[o]
        if t.kind in ("input", "weight"):
            raise UnsupportedModelError("a model output that is an input or a constant is not supported")
    prog = Program(inputs=[env[p] for p in main.params], outputs=outs, tensors=tensors, weights=weights, calls=calls)
    # Give the graph inputs/outputs their model names for the report and the API.
    for o in outs:
        root = prog.storage_root(o)
        tensors[root].kind = "output"
        tensors[o].kind = "output"
    _dead_tensor_check(prog)
    return prog


def _dead_tensor_check(prog: Program) -> None:
    produced = {n for c in prog.calls for n in c.outputs}
    for o in prog.outputs:
        if prog.storage_root(o) not in produced:
            raise UnsupportedModelError(f"output '{o}' is not computed by any kernel")
