"""The executor's view of a model: tensors, constant weights and an ordered list of kernel calls.

`extract_program` walks the dataflow bindings of the lowered Relax `main` (see passes.py); the
result is plain data that the memory planner and the C emitter consume, independent of TVM.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnsupportedModelError

DTYPE_BYTES = {"float32": 4, "int32": 4, "int8": 1, "uint8": 1, "int16": 2, "bool": 1, "int64": 8, "float16": 2}
C_TYPES = {"float32": "float", "int32": "int32_t", "int8": "int8_t", "uint8": "uint8_t",
           "int16": "int16_t", "bool": "int8_t", "int64": "int64_t", "float16": "uint16_t"}


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str                      # input | output | activation | weight | scratch
    alias_of: str | None = None    # a view (reshape, row band) of another tensor's storage
    packed: int | None = None      # weights stored as panels of this many output channels
    byte_offset: int = 0           # where a view starts inside `alias_of`
    panel_order: str = ""          # ... each panel's values in this order (schedules.ukernels.PANEL_ORDERS)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPE_BYTES[self.dtype]


@dataclass
class KernelCall:
    kernel: str                    # PrimFunc name in the module
    inputs: list[str]              # tensor names (activations and weights), PrimFunc order
    outputs: list[str]
    scratch: list[str] = field(default_factory=list)   # filled by codegen from the kernel's needs
    builtin: str | None = None     # run by edgecompile's own C (codegen/builtins.py), not a TVM kernel
    rows: tuple[int, int] | None = None   # `input_rows`: the graph input rows [y0, y1) it reads (ir/stream.py)


@dataclass
class Program:
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Tensor]
    weights: dict[str, np.ndarray]
    calls: list[KernelCall]

    assembled: list[str] = field(default_factory=list)   # tensors made of row-band views (patches)
    streamed: list[str] = field(default_factory=list)    # graph inputs read row by row, not stored (ir/stream.py)

    def storage_root(self, name: str) -> str:
        while self.tensors[name].alias_of is not None:
            name = self.tensors[name].alias_of  # type: ignore[assignment]
        return name

    def storage_offset(self, name: str) -> int:
        """Byte offset of a tensor inside its storage root (views of views add up)."""
        offset = 0
        while self.tensors[name].alias_of is not None:
            offset += self.tensors[name].byte_offset
            name = self.tensors[name].alias_of  # type: ignore[assignment]
        return offset


def _sanitize(name: str) -> str:
    out = "".join(c if c.isalnum() else "_" for c in name)
    return out if out and not out[0].isdigit() else f"t_{out}"


def extract_program(mod: Any) -> Program:
    """The Program of a lowered module (`passes.lower_graph`): its `main` may hold only kernel
    calls, views (reshape, `memory.view` row bands), tuples and constants. Calls to functions
    marked by the patch rewrite (`patches.py`) become what they stand for: `ec.assemble_rows` no
    call (its inputs are views of its output), `ec.in_place_transpose` a builtin whose output
    is its input's storage, `ec.copy_rows` a builtin copy (cached halo rows)."""
    return _Extractor(mod["main"], mod).program()


def _ty_of(ty: Any) -> tuple[tuple[int, ...], str]:
    try:
        return tuple(int(d) for d in ty.shape), str(ty.dtype)
    except (TypeError, ValueError, AttributeError):
        raise UnsupportedModelError(f"tensor of type {ty} has no static shape") from None


class _Extractor:
    """Walks `main`'s dataflow bindings, naming tensors and deduplicating constant weights."""

    def __init__(self, main: Any, mod: Any = None) -> None:
        self.main = main
        self.mod = mod
        self.assembled: list[str] = []
        self.tensors: dict[str, Tensor] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.weight_by_hash: dict[bytes, str] = {}
        self.env: dict[Any, Any] = {}          # relax var -> tensor name, or tuple of names
        self.calls: list[KernelCall] = []
        self.used_names: set[str] = set()

    def fresh(self, base: str) -> str:
        base = _sanitize(base)
        name, i = base, 1
        while name in self.used_names:
            i += 1
            name = f"{base}_{i}"
        self.used_names.add(name)
        return name

    def weight(self, c: Any) -> str:
        arr = np.array(c.value.numpy(), order="C")
        key = hashlib.sha256(arr.dtype.str.encode() + str(arr.shape).encode() + arr.tobytes()).digest()
        if key in self.weight_by_hash:
            return self.weight_by_hash[key]
        name = self.fresh(f"w{len(self.weights)}")
        self.weights[name] = arr
        self.weight_by_hash[key] = name
        self.tensors[name] = Tensor(name, tuple(arr.shape), str(arr.dtype), "weight")
        return name

    def arg(self, e: Any) -> str:
        import tvm

        if isinstance(e, tvm.ir.expr.Constant):
            return self.weight(e)
        if e in self.env and isinstance(self.env[e], str):
            return self.env[e]
        raise UnsupportedModelError(f"unsupported kernel argument {type(e).__name__}")

    def kernel_call(self, var: Any, v: Any) -> Any:
        from tvm import relax

        gv, args = v.args[0], v.args[1]
        ins = [self.arg(a) for a in args.fields]
        out_tys = v.ty_args[0]
        fields = list(out_tys.fields) if isinstance(out_tys, relax.TupleType) else [out_tys]
        outs = []
        for j, ty in enumerate(fields):
            shape, dtype = _ty_of(ty)
            name = self.fresh(var.name if len(fields) == 1 else f"{var.name}_{j}")
            self.tensors[name] = Tensor(name, shape, dtype, "activation")
            outs.append(name)
        attrs = self.mod[gv].attrs if self.mod is not None else None
        if attrs is not None and "ec.assemble_rows" in attrs:
            self.assemble(ins, outs[0])
        elif attrs is not None and "ec.in_place_transpose" in attrs:
            self.tensors[outs[0]].alias_of = ins[0]
            self.calls.append(KernelCall(gv.name_hint, ins, outs, builtin="transpose_in_place"))
        elif attrs is not None and "ec.copy_rows" in attrs:
            self.calls.append(KernelCall(gv.name_hint, ins, outs, builtin="copy_rows"))
        elif attrs is not None and "ec.copy_rows" in attrs:
            self.calls.append(KernelCall(gv.name_hint, ins, outs, builtin="copy_rows"))
        else:
            self.calls.append(KernelCall(gv.name_hint, ins, outs))
        return outs[0] if len(fields) == 1 else tuple(outs)

    def assemble(self, parts: list[str], whole: str) -> None:
        """`whole` is the concatenation of `parts` along its outer axes: each part becomes a view
        of it at its place instead of being copied there."""
        offset = 0
        for part in parts:
            t = self.tensors[part]
            produced = any(part in c.outputs for c in self.calls)
            if t.alias_of is not None or t.kind != "activation" or not produced or t.dtype != self.tensors[whole].dtype:
                raise UnsupportedModelError(f"'{part}' cannot be placed inside '{whole}'")
            t.alias_of, t.byte_offset = whole, offset
            offset += t.nbytes
        if offset != self.tensors[whole].nbytes:
            raise UnsupportedModelError(f"the parts of '{whole}' make {offset} B, not {self.tensors[whole].nbytes} B")
        self.assembled.append(whole)

    def view(self, var: Any, v: Any, offset: int = 0) -> str:
        base = self.arg(v.args[0])
        shape, dtype = _ty_of(var.ty)
        name = self.fresh(var.name)
        self.tensors[name] = Tensor(name, shape, dtype, "activation", alias_of=base, byte_offset=offset)
        if offset + self.tensors[name].nbytes > self.tensors[base].nbytes:
            raise UnsupportedModelError(f"view '{var.name}' reaches past the end of '{base}'")
        return name

    def binding(self, var: Any, v: Any) -> Any:
        import tvm
        from tvm import relax

        op = v.op.name if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) else None
        if op == "relax.call_tir":
            return self.kernel_call(var, v)
        if op == "relax.reshape":
            return self.view(var, v)
        if op == "relax.memory.view":
            return self.view(var, v, int(v.args[3].value))
        if isinstance(v, relax.TupleGetItem):
            return self.env[v.tuple_value][v.index]
        if isinstance(v, relax.Tuple):
            return tuple(self.arg(f) for f in v.fields)
        if isinstance(v, relax.Var):
            return self.env[v]
        if isinstance(v, tvm.ir.expr.Constant):
            return self.weight(v)
        raise UnsupportedModelError(f"binding '{var.name}' ({type(v).__name__}) cannot be executed")

    def program(self) -> Program:
        from tvm import relax

        main = self.main
        for i, p in enumerate(main.params):
            shape, dtype = _ty_of(p.ty)
            name = self.fresh(f"input{i}" if len(main.params) > 1 else "input")
            self.tensors[name] = Tensor(name, shape, dtype, "input")
            self.env[p] = name
        for block in main.body.blocks:
            for b in block.bindings:
                self.env[b.var] = self.binding(b.var, b.value)
        result = main.body.body
        outs = self.env.get(result)
        if outs is None and isinstance(result, relax.Tuple):
            outs = tuple(self.arg(f) for f in result.fields)
        if outs is None:
            raise UnsupportedModelError("the model's output does not depend on its input (a constant): nothing "
                                        "to compute")
        outs = [outs] if isinstance(outs, str) else list(outs)
        for o in outs:
            if self.tensors[o].kind in ("input", "weight"):
                raise UnsupportedModelError("a model output that is an input or a constant is not supported")
        prog = Program(inputs=[self.env[p] for p in main.params], outputs=outs, tensors=self.tensors,
                       weights=self.weights, calls=self.calls, assembled=self.assembled)
        # Give the graph inputs/outputs their model names for the report and the API.
        for o in outs:
            self.tensors[prog.storage_root(o)].kind = "output"
            self.tensors[o].kind = "output"
        _dead_tensor_check(prog)
        return prog


def _dead_tensor_check(prog: Program) -> None:
    produced = {n for c in prog.calls for n in c.outputs}
    for o in prog.outputs:
        if prog.storage_root(o) not in produced:
            raise UnsupportedModelError(f"output '{o}' is not computed by any kernel")
