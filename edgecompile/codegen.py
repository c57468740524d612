"""Codegen: scheduled TIR kernels -> plain C functions, plus the static executor, `model.h` and
the weights.

Kernels go through TVM's own lowering passes and C code generator, with one change: a TIR
pipeline of ours (`ec_unpacked`) replaces `MakePackedAPI`. Each kernel becomes

    static int32_t ec_<kind>_...(float *restrict in, const-data weights..., float *restrict out,
                                  float *restrict scratch0, ...)

with plain pointer arguments: no DLTensor, no packed FFI, no TVM runtime. Intermediate buffers a
kernel needs beyond a small stack allowance are turned into extra `scratch` pointer parameters that
the memory planner places inside the arena, so nothing is ever allocated at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import EdgeCompileError
from .memory import MemoryPlan
from .program import C_TYPES, DTYPE_BYTES, Program, Tensor
from .schedules.ukernels import emit_ukernels

# Intermediate buffers below this size stay on the stack (register tiles, small row buffers);
# larger ones become arena scratch.
STACK_ALLOC_LIMIT = 1024
PIPELINE_NAME = "ec_unpacked"


@dataclass
class KernelSource:
    symbol: str
    params: list[tuple[str, str]]     # (C type, name) in call order, scratch last
    scratch_bytes: list[int]
    stack_bytes: int                  # bytes of intermediate buffers left on the stack
    c_code: str                       # the function definition


# ----------------------------------------------------------------------------- TIR pipeline


def _rebuild_stmt(stmt: Any, leaf: Any) -> Any:
    """Post-order rebuild of TIR container statements, mapping leaf statements through `leaf`."""
    from tvm import tirx

    if isinstance(stmt, tirx.SeqStmt):
        return tirx.SeqStmt([_rebuild_stmt(s, leaf) for s in stmt.seq])
    if isinstance(stmt, tirx.For):
        return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, _rebuild_stmt(stmt.body, leaf),
                        stmt.thread_binding, stmt.annotations, stmt.step)
    if isinstance(stmt, tirx.IfThenElse):
        else_case = None if stmt.else_case is None else _rebuild_stmt(stmt.else_case, leaf)
        return tirx.IfThenElse(stmt.condition, _rebuild_stmt(stmt.then_case, leaf), else_case)
    if isinstance(stmt, tirx.AttrStmt):
        return tirx.AttrStmt(stmt.node, stmt.attr_key, stmt.value, _rebuild_stmt(stmt.body, leaf))
    if isinstance(stmt, tirx.While):
        return tirx.While(stmt.condition, _rebuild_stmt(stmt.body, leaf))
    return leaf(stmt)


def _buffer_elems(buf: Any) -> int:
    n = 1
    for d in buf.shape:
        n *= int(d)
    return n


def unpack_kernel(func: Any) -> Any:
    """Buffer parameters -> plain pointers; large allocations -> extra scratch pointer params."""
    import tvm
    from tvm import tirx
    from tvm.ir import PointerType, PrimType

    params, decls = [], []
    for p in func.params:
        if not tirx.is_buffer_var(p):
            raise EdgeCompileError(f"kernel parameter {p.name} is not a buffer")
        ptr = tirx.Var(p.name, PointerType(p.ty.dtype))
        params.append(ptr)
        decls.append(tirx.DeclBuffer(p, data=ptr))
    scratch: list[tuple[Any, int]] = []
    stack = [0]

    def hoist(stmt: Any) -> Any:
        if isinstance(stmt, tirx.AllocBuffer):
            buf = stmt.buffer
            nbytes = _buffer_elems(buf) * DTYPE_BYTES.get(str(buf.ty.dtype), 4)
            if str(buf.ty.storage_scope) in ("global", "") and nbytes >= STACK_ALLOC_LIMIT:
                ptr = tirx.Var(f"scratch{len(scratch)}", PointerType(buf.ty.dtype))
                scratch.append((ptr, nbytes))
                return tirx.DeclBuffer(buf, data=ptr)
            stack[0] += nbytes
        return stmt

    body = _rebuild_stmt(func.body, hoist)
    body = tirx.SeqStmt(decls + [body, tirx.Return(tirx.const(0, "int32"))])
    # LowerTVMBuiltin wants a device context for the small stack allocations left.
    body = tirx.AttrStmt(tvm.runtime.convert("default"), "device_id", tirx.const(0, "int32"), body)
    body = tirx.AttrStmt(tvm.runtime.convert("default"), "device_type", tirx.const(1, "int32"), body)
    new = tirx.PrimFunc(params + [p for p, _ in scratch], body, ret_type=PrimType("int32"), attrs=func.attrs)
    new = new.with_attr("ec.scratch_bytes", [n for _, n in scratch])
    return new.with_attr("ec.stack_bytes", stack[0])


def _register_pipeline() -> None:
    import tvm
    from tvm import s_tir, tirx
    from tvm.tirx import compilation_pipeline as cp

    if PIPELINE_NAME in cp.PIPELINE_MAP:
        return

    @tvm.transform.module_pass(opt_level=0, name="ECUnpackKernels")
    def unpack(mod: Any, _ctx: Any) -> Any:
        return tvm.IRModule({gv: unpack_kernel(f) for gv, f in mod.functions.items()}, attrs=mod.attrs)

    def factory() -> Any:
        @tvm.transform.module_pass(opt_level=0, name="ECLowerKernels")
        def lower(mod: Any, _ctx: Any) -> Any:
            passes = [
                s_tir.transform.CanonicalizeLoop(),
                s_tir.transform.LowerInitBlock(),
                s_tir.transform.PlanAndUpdateBufferAllocationLocation(),
                s_tir.transform.ConvertBlocksToOpaque(),
                s_tir.transform.CompactBufferAllocation(),
                s_tir.transform.LowerMatchBuffer(),
                s_tir.transform.StmtSimplify(),
                s_tir.transform.LowerOpaqueBlock(),
                tirx.transform.FlattenBuffer(),
                tirx.transform.NarrowDataType(32),
                s_tir.transform.LoopPartition(),
                tirx.transform.VectorizeLoop(True),
                s_tir.transform.HoistIfThenElse(),
                tirx.transform.UnrollLoop(),
                s_tir.transform.RenormalizeSplitPattern(),
                tirx.transform.StmtSimplify(),
                tirx.transform.RemoveNoOp(),
                s_tir.transform.RewriteUnsafeSelect(),
                tirx.transform.CommonSubexprElim(),
                tirx.transform.VerifyMemory(),
                unpack,
            ]
            return tvm.transform.Sequential(passes)(mod)

        return lower, cp.finalize_host_passes, cp.finalize_device_passes

    cp.register_tir_pipeline(PIPELINE_NAME, factory)


_PREAMBLE_LINES = re.compile(
    r'^(#define TVM_EXPORTS|#include "tvm/.*"|#include "dlpack/.*"|void\* __tvm_ffi__library_ctx = NULL;'
    r"|// tvm target:.*|#ifdef __cplusplus|extern \"C\"|#endif)\s*$"
)


def lower_kernels(funcs: dict[str, Any], target_dict: dict[str, Any],
                  streaming: set[str] = frozenset()) -> dict[str, KernelSource]:
    """Lower scheduled PrimFuncs (symbol -> PrimFunc) to C function definitions. Kernels in
    `streaming` may run in place (output overlapping their first input): those two pointers are
    not declared `restrict`."""
    import tvm
    from tvm import tirx

    _register_pipeline()
    mod = tvm.IRModule({sym: f.with_attr("global_symbol", sym) for sym, f in sorted(funcs.items())})
    target = tvm.target.Target(target_dict if target_dict.get("kind") == "c" else {"kind": "c"})
    mod = tirx.transform.BindTarget(target.with_host(target))(mod)
    pipeline, finalize_host, _ = tirx.get_tir_pipeline(PIPELINE_NAME)
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        lowered = finalize_host()(pipeline(mod))
        source = tvm.get_global_func("target.build.c")(lowered, target).inspect_source()
    infos = {}
    for gv, f in lowered.functions.items():
        sym = gv.name_hint
        infos[sym] = ([int(n) for n in f.attrs["ec.scratch_bytes"]], int(f.attrs["ec.stack_bytes"]))
    return _split_c_source(source, infos, streaming)


def _split_c_source(source: str, infos: dict[str, tuple[list[int], int]],
                    streaming: set[str] = frozenset()) -> dict[str, KernelSource]:
    for bad in ("TVMBackendAllocWorkspace", "TVMFFI", "__tvm_ffi_"):
        kept = [ln for ln in source.splitlines() if bad in ln and "__tvm_ffi__library_ctx" not in ln]
        if kept:
            raise EdgeCompileError(f"generated kernel code still depends on the TVM runtime ({bad}): {kept[0].strip()}")
    lines = [ln for ln in source.splitlines() if not _PREAMBLE_LINES.match(ln)]
    text = "\n".join(lines)
    out: dict[str, KernelSource] = {}
    for sym, (scratch, stack) in infos.items():
        m = re.search(r"^TVM_DLL int32_t " + re.escape(sym) + r"\((.*?)\) \{$", text, re.M)
        if m is None:
            raise EdgeCompileError(f"kernel {sym} not found in generated C")
        start = m.start()
        depth, i = 0, text.index("{", m.end() - 1)
        while True:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        body = text[text.index("{", m.end() - 1): i + 1]
        params = []
        for p in m.group(1).split(","):
            ctype, name = p.strip().rsplit(" ", 1)
            params.append((ctype.rstrip("*").strip() + "*", name.lstrip("*")))
        loose = {0, len(params) - 1 - len(scratch)} if sym in streaming else set()
        sig = ", ".join(f"{t} {'' if i in loose else 'restrict '}{n}" for i, (t, n) in enumerate(params))
        # noinline: each kernel keeps its own symbol (footprint by kernel, per-kernel profiles)
        code = f"static __attribute__((noinline)) int32_t {sym}({sig}) {body}"
        out[sym] = KernelSource(sym, params, scratch, stack, code)
        del start
    return out


# ----------------------------------------------------------------------------- weights


WEIGHTS_C_LIMIT = 16 << 20   # above this, weights go to weights.bin included by weights.S

_UINT = {1: "uint8_t", 2: "uint16_t", 4: "uint32_t", 8: "uint64_t"}
_HEX = {1: "0x%02x", 2: "0x%04x", 4: "0x%08xu", 8: "0x%016xull"}


def weight_layout(prog: Program) -> tuple[dict[str, int], int]:
    """Offsets of each weight inside the weights blob (16-byte aligned), in name order."""
    offsets, off = {}, 0
    for name in prog.weights:
        offsets[name] = off
        off += (prog.tensors[name].nbytes + 15) // 16 * 16
    return offsets, off


def weights_blob(prog: Program) -> bytes:
    offsets, total = weight_layout(prog)
    blob = bytearray(total)
    for name, arr in prog.weights.items():
        data = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        blob[offsets[name]: offsets[name] + len(data)] = data
    return bytes(blob)


def emit_weights_c(prog: Program) -> str:
    """C arrays (exact bit patterns, as unsigned integers in a union with the element type)."""
    parts = ["/* Generated by edgecompile: model weights, exact bit patterns. */", "#include <stdint.h>", ""]
    for name, arr in prog.weights.items():
        t = prog.tensors[name]
        width = DTYPE_BYTES[t.dtype]
        flat = np.ascontiguousarray(arr).reshape(-1).view(f"<u{width}")
        n = max(flat.size, 1)
        vals = [_HEX[width] % int(v) for v in flat.tolist()] or ["0"]
        rows = [", ".join(vals[i: i + 8]) for i in range(0, len(vals), 8)]
        body = ",\n    ".join(rows)
        parts.append(f"/* {name}: {t.dtype}{list(t.shape)} */")
        parts.append(
            f"const union {{ {_UINT[width]} bits[{n}]; {C_TYPES[t.dtype]} v[{n}]; }} ec_{name} "
            f'__attribute__((aligned(16), section(".rodata.ec_weights"))) = {{{{\n    {body}\n}}}};'
        )
    return "\n".join(parts) + "\n"


def emit_weights_asm(prog: Program) -> str:
    offsets, total = weight_layout(prog)
    lines = [
        "/* Generated by edgecompile: model weights, included from weights.bin. */",
        '    .section .rodata.ec_weights,"a"',
        "    .balign 16",
        "ec_weights_blob:",
        '    .incbin "weights.bin"',
    ]
    for name in prog.weights:
        lines += [f"    .global ec_{name}", f"    .set ec_{name}, ec_weights_blob + {offsets[name]}"]
    lines += ["#if defined(__linux__) && defined(__ELF__)",
              '    .section .note.GNU-stack,"",%progbits   /* no executable stack */',
              "#endif"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- executor


def _c_ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def emit_model_h(model: str, prog: Program, plan: MemoryPlan, ext: bool, target: str, digest: str,
                 quant: dict[str, Any] | None = None) -> str:
    g = []
    ins = [prog.tensors[n] for n in prog.inputs]
    outs = [prog.tensors[n] for n in prog.outputs]

    def shape_macros(prefix: str, t: Tensor) -> list[str]:
        dims = ", ".join(str(d) for d in t.shape)
        return [
            f"#define {prefix}_NDIM {len(t.shape)}",
            f"#define {prefix}_SHAPE {{{dims}}}",
            f"#define {prefix}_SIZE {int(np.prod(t.shape, dtype=np.int64))}   /* elements ({t.dtype}) */",
        ]

    int8_doc = ("\n * int8 model: input and output are int8 with the scales and zero points below\n"
                " * (q = round(real / EC_INPUT_SCALE) + EC_INPUT_ZERO_POINT).") if quant else ""
    g.append(f"""/* Generated by edgecompile for model '{model}', target '{target}'. Do not edit.
 *
 * Standalone C: no TVM runtime, no malloc. All activations, the graph input and output
 * {'(unless passed by the caller) ' if not ext else ''}and every kernel's scratch live in one static arena of
 * EC_ARENA_BYTES bytes; weights are const data.
 *
 * Usage:
 *     ec_input_t in[EC_INPUT_SIZE];
 *     ec_output_t out[EC_OUTPUT_SIZE];
 *     ... fill in ...
 *     if (ec_model_run(in, out) != 0) {{ error }}
 *
 * Tensors use the model's own layout (for the zoo: NCHW input, as in PyTorch).{int8_doc}
 */
#ifndef EC_MODEL_H
#define EC_MODEL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {{
#endif

#define EC_MODEL_NAME "{model}"
#define EC_MODEL_HASH "{digest}"   /* sha256 prefix of the generated sources */
#define EC_ARENA_BYTES {plan.arena_bytes}
#define EC_NUM_INPUTS {len(ins)}
#define EC_NUM_OUTPUTS {len(outs)}
#define EC_NUM_CALLS {len(prog.calls)}   /* kernel calls per inference */
#define EC_EXTERNAL_IO {1 if ext else 0}

typedef {C_TYPES[ins[0].dtype]} ec_input_t;     /* element type of input 0 */
typedef {C_TYPES[outs[0].dtype]} ec_output_t;    /* element type of output 0 */
""")
    if quant:
        for i, key in (("INPUT", "input"), ("OUTPUT", "output")):
            g.append(f"#define EC_{i}_SCALE {quant[key]['scale']!r}f   /* real = scale * (q - zero point) */")
            g.append(f"#define EC_{i}_ZERO_POINT {quant[key]['zero_point']}")
    for i, t in enumerate(ins):
        g += shape_macros("EC_INPUT" if i == 0 else f"EC_INPUT{i}", t)
    for i, t in enumerate(outs):
        g += shape_macros("EC_OUTPUT" if i == 0 else f"EC_OUTPUT{i}", t)
    g.append("""
/* Run one inference. inputs[i] / outputs[i] point to the caller's buffers of EC_INPUT*_SIZE /
 * EC_OUTPUT*_SIZE elements. Without EC_EXTERNAL_IO a NULL pointer means "already in / leave in
 * the arena" (see ec_model_input / ec_model_output), which saves a copy. Returns 0 on success. */
int ec_model_run_multi(const void *const inputs[EC_NUM_INPUTS], void *const outputs[EC_NUM_OUTPUTS]);

/* The same for single-input, single-output models (output = first output). */
int ec_model_run(const ec_input_t *input, ec_output_t *output);

#if !EC_EXTERNAL_IO
/* Where input i / output i live inside the arena, for zero-copy use. */
ec_input_t *ec_model_input(int index);
const ec_output_t *ec_model_output(int index);
#endif

/* The arena itself (for measuring or placing it). */
extern uint8_t ec_arena[];

#ifdef __cplusplus
}
#endif
#endif /* EC_MODEL_H */
""")
    return "\n".join(g)


def emit_model_c(
    model: str,
    prog: Program,
    plan: MemoryPlan,
    kernels: dict[str, KernelSource],
    call_symbols: list[str],
    call_docs: list[str],
    ext: bool,
    lanes: int = 1,
    lane_fma: bool = False,
) -> str:
    c = [f"/* Generated by edgecompile for model '{model}': kernels and static executor. Do not edit. */",
         "#include <math.h>", "#include <stdbool.h>", "#include <stddef.h>", "#include <stdint.h>",
         "#include <string.h>", '#include "model.h"', "",
         "#ifndef EC_ARENA_ATTR", "#define EC_ARENA_ATTR", "#endif",
         "/* Per-call profiling: build with -DEC_PROFILE and provide uint64_t ec_profile_clock(void);",
         " * ec_profile_ticks[i] accumulates the clock ticks spent in kernel call i. */",
         "#ifdef EC_PROFILE",
         "uint64_t ec_profile_clock(void);",
         f"uint64_t ec_profile_ticks[{max(len(prog.calls), 1)}];",
         "#define EC_PROFILE_BEGIN() uint64_t ec_t0_ = ec_profile_clock()",
         "#define EC_PROFILE_END(i) ec_profile_ticks[i] += ec_profile_clock() - ec_t0_",
         "#else",
         "#define EC_PROFILE_BEGIN() do { } while (0)",
         "#define EC_PROFILE_END(i) do { } while (0)",
         "#endif",
         "/* One arena for every activation and scratch buffer; place it with EC_ARENA_ATTR. */",
         f"uint8_t ec_arena[{max(plan.arena_bytes, 16)}] __attribute__((aligned(16))) EC_ARENA_ATTR;", ""]
    # weights
    c.append("/* Weights (weights.c or weights.S). */")
    for name in prog.weights:
        t = prog.tensors[name]
        width = DTYPE_BYTES[t.dtype]
        n = max(int(np.prod(t.shape, dtype=np.int64)), 1)
        c.append(f"extern const union {{ {_UINT[width]} bits[{n}]; {C_TYPES[t.dtype]} v[{n}]; }} ec_{name};")
    c.append("")
    kernel_code = "\n\n".join(kernels[sym].c_code for sym in sorted(set(call_symbols)))
    micro = emit_ukernels(kernel_code, lanes, lane_fma)
    if micro:
        c.append("/* ---- micro-kernels (edgecompile, called from the tensorized TVM kernels) ---- */")
        c.append(micro)
    c.append("/* ---- kernels (generated by TVM from the scheduled TIR) ---- */")
    c.append(kernel_code)
    c.append("")

    def addr(name: str, ctype: str | None = None) -> str:
        t = prog.tensors[name]
        ctype = ctype or C_TYPES[t.dtype]
        if t.kind == "weight":
            return f"({ctype} *)ec_{name}.v"
        root = prog.storage_root(name)
        if root in plan.external:
            idx = prog.inputs.index(root) if root in prog.inputs else prog.outputs.index(root)
            return f"({ctype} *)(io_{'in' if root in prog.inputs else 'out'}[{idx}])"
        return f"({ctype} *)(ec_arena + {plan.offsets[root]})"

    c.append("/* ---- executor: kernel calls in order over the static memory plan ---- */")
    c.append("int ec_model_run_multi(const void *const inputs[EC_NUM_INPUTS], void *const outputs[EC_NUM_OUTPUTS]) {")
    if ext:
        c.append("  const void *const *io_in = inputs;")
        c.append("  void *const *io_out = outputs;")
        c.append("  for (int i = 0; i < EC_NUM_INPUTS; ++i) if (!inputs[i]) return -2;")
        c.append("  for (int i = 0; i < EC_NUM_OUTPUTS; ++i) if (!outputs[i]) return -2;")
    else:
        for i, name in enumerate(prog.inputs):
            c.append(f"  if (inputs && inputs[{i}]) memcpy({addr(name)}, inputs[{i}], {prog.tensors[name].nbytes});")
    for i, (call, sym, doc) in enumerate(zip(prog.calls, call_symbols, call_docs)):
        names = call.inputs + call.outputs + call.scratch
        ptypes = [t.rstrip("*").strip() for t, _ in kernels[sym].params]
        if len(ptypes) != len(names):
            raise EdgeCompileError(f"{sym}: kernel takes {len(ptypes)} arguments, call passes {len(names)}")
        args = ", ".join(addr(a, t) for a, t in zip(names, ptypes))
        c.append(f"  {{ /* {i}: {doc} */")
        c.append("    EC_PROFILE_BEGIN();")
        c.append(f"    if ({sym}({args}) != 0) return {i + 1};")
        c.append(f"    EC_PROFILE_END({i});")
        c.append("  }")
    if not ext:
        for i, name in enumerate(prog.outputs):
            c.append(f"  if (outputs && outputs[{i}]) memcpy(outputs[{i}], {addr(name)}, {prog.tensors[name].nbytes});")
    c.append("  return 0;")
    c.append("}")
    c.append("")
    c.append("int ec_model_run(const ec_input_t *input, ec_output_t *output) {")
    c.append("  const void *ins[EC_NUM_INPUTS] = {input};")
    c.append("  void *outs[EC_NUM_OUTPUTS] = {output};")
    c.append("  return ec_model_run_multi(ins, outs);")
    c.append("}")
    if not ext:
        c.append("")
        c.append("ec_input_t *ec_model_input(int index) {")
        c.append("  switch (index) {")
        for i, name in enumerate(prog.inputs):
            c.append(f"  case {i}: return {addr(name)};")
        c.append("  default: return NULL;")
        c.append("  }")
        c.append("}")
        c.append("")
        c.append("const ec_output_t *ec_model_output(int index) {")
        c.append("  switch (index) {")
        for i, name in enumerate(prog.outputs):
            c.append(f"  case {i}: return {addr(name)};")
        c.append("  default: return NULL;")
        c.append("  }")
        c.append("}")
    return "\n".join(c) + "\n"
