"""Static memory planner: every activation, graph input/output and kernel scratch buffer gets an
offset inside one arena, computed from liveness.

Buffers whose lifetimes overlap never share bytes; the others may. Placement is first fit (lowest
offset that fits between already placed, simultaneously live buffers) under several orderings,
greedy-by-size among them (the strategy TFLite Micro uses); the smallest arena wins. On
chain-like CNN graphs this reaches the lower bound (the largest set of simultaneously live
bytes) or comes close.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..ir.kernel import KernelInfo
from ..ir.program import DTYPE_BYTES, Program, Tensor

ALIGN = 16


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int            # bytes
    start: int           # first step at which the buffer holds live data (written)
    end: int             # last step at which it is read (inclusive)


@dataclass(frozen=True)
class Overlap:
    """`out` may share bytes with `inp` (whose last use is the same kernel call) as long as
    offset(out) - offset(inp) <= max_delta: the kernel streams rows, consuming input rows before
    it overwrites them (MCUNet/TinyEngine-style in-place execution)."""

    out: str
    inp: str
    max_delta: int


def streaming_max_delta(in_rows: int, in_row_bytes: int, out_rows: int, out_row_bytes: int,
                        tile_rows: int, stride: int, kernel: int) -> int:
    """Largest offset(out) - offset(in) that never overwrites input still to be read, for a
    kernel that produces `tile_rows` output rows at a time after reading the input rows of that
    tile's window. Conservative in the padding: assumes the top padding is kernel - 1 rows."""
    pad = kernel - 1
    best = math.inf
    for t in range(out_rows // tile_rows):
        need = (t + 1) * tile_rows * stride - pad   # first input row a later tile reads
        if need >= in_rows:
            break
        best = min(best, max(need, 0) * in_row_bytes - (t + 1) * tile_rows * out_row_bytes)
    return int(best) if best != math.inf else 1 << 40


def add_scratch(prog: Program, sizes: list[list[int]]) -> None:
    """Give call i the scratch buffers `sizes[i]` (bytes) its kernel takes as extra pointers, as
    tensors the planner places in the arena for the duration of the call."""
    for i, (call, nbytes) in enumerate(zip(prog.calls, sizes)):
        for j, n in enumerate(nbytes):
            name = f"scratch_{i}_{j}"
            prog.tensors[name] = Tensor(name, (n,), "uint8", "scratch")
            call.scratch.append(name)


def streaming_overlaps(prog: Program, infos: list[KernelInfo]) -> list[Overlap]:
    """The in-place overlaps the kernel calls allow (`infos[i]` describes call i): a kernel that
    streams rows may write its output over the input rows it has consumed."""
    overlaps = []
    for call, info in zip(prog.calls, infos):
        if info.streams_rows:
            inp, out = prog.tensors[call.inputs[0]], prog.tensors[call.outputs[0]]
            _, hin, win, cin = inp.shape
            _, h, w, cout = out.shape
            in_row = win * cin * DTYPE_BYTES[inp.dtype]     # bytes of one NHWC row, in each tensor's own type
            out_row = w * cout * DTYPE_BYTES[out.dtype]
            delta = streaming_max_delta(hin, in_row, h, out_row, info.rows, info.stride[0], info.kernel[0])
            overlaps.append(Overlap(prog.storage_root(call.outputs[0]), prog.storage_root(call.inputs[0]), delta))
    return overlaps


@dataclass
class MemoryPlan:
    offsets: dict[str, int]          # buffer (storage root) name -> arena offset
    sizes: dict[str, int]
    lifetimes: dict[str, tuple[int, int]]
    arena_bytes: int
    peak_live_bytes: int             # lower bound: max over steps of bytes live at that step
    external: list[str] = field(default_factory=list)   # roots kept outside the arena (user I/O)
    in_place: list[Overlap] = field(default_factory=list)  # overlaps the plan actually uses

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of simultaneously live buffers whose byte ranges intersect beyond what an
        allowed in-place overlap permits (must be empty)."""
        allowed = {(o.out, o.inp): o.max_delta for o in self.in_place}
        bad = []
        names = sorted(self.offsets)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                if not _compatible(a, self.offsets[a], b, self.offsets[b], self.sizes, self.lifetimes, allowed):
                    bad.append((a, b))
        return bad


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


_ORDERS = {
    # the classic: largest first
    "size": lambda b: (-b.size, b.start, b.name),
    # long-lived large buffers first: they constrain the most
    "area": lambda b: (-b.size * (b.end - b.start + 1), b.start, b.name),
    # in program order: what a linear scan would do
    "start": lambda b: (b.start, -b.size, b.name),
    # longest-lived first
    "lifetime": lambda b: (-(b.end - b.start), -b.size, b.name),
}


def _compatible(a: str, oa: int, b: str, ob: int, sizes: dict[str, int], life: dict[str, tuple[int, int]],
                allowed: dict[tuple[str, str], int]) -> bool:
    (s1, e1), (s2, e2) = life[a], life[b]
    if s1 > e2 or s2 > e1:
        return True                                    # never live together
    if oa >= ob + sizes[b] or ob >= oa + sizes[a]:
        return True                                    # disjoint bytes
    if (a, b) in allowed:
        return oa - ob <= allowed[(a, b)]
    if (b, a) in allowed:
        return ob - oa <= allowed[(b, a)]
    return False


def _first_fit(order: list[Buffer], allowed: dict[tuple[str, str], int]) -> tuple[dict[str, int], int]:
    sizes = {b.name: _align(max(b.size, 1)) for b in order}
    life = {b.name: (b.start, b.end) for b in order}
    partners: dict[str, list[tuple[str, int, int]]] = {}
    for (out, inp), delta in allowed.items():
        partners.setdefault(out, []).append((inp, delta, +1))
        partners.setdefault(inp, []).append((out, delta, -1))
    offsets: dict[str, int] = {}
    for buf in order:
        live = [(n, offsets[n]) for n in offsets if life[n][0] <= buf.end and buf.start <= life[n][1]]
        candidates = {0} | {off + sizes[n] for n, off in live}
        for other, delta, sign in partners.get(buf.name, []):
            if other in offsets:
                # as far into the partner as the streaming order allows
                cand = offsets[other] + delta if sign > 0 else offsets[other] - delta
                cand = cand // ALIGN * ALIGN if sign > 0 else -(-cand // ALIGN) * ALIGN
                if cand >= 0:
                    candidates.add(cand)
        for cand in sorted(candidates):
            if all(_compatible(buf.name, cand, n, off, sizes, life, allowed) for n, off in live):
                offsets[buf.name] = cand
                break
    return offsets, max((offsets[n] + sizes[n] for n in offsets), default=0)


def plan_buffers(buffers: list[Buffer], overlaps: list[Overlap] = ()) -> MemoryPlan:
    """Assign offsets to buffers: first-fit placement under a few orderings (largest first,
    largest size x lifetime first, program order, longest-lived first); the smallest arena wins.
    `overlaps` lists in-place pairs the planner may overlap. Deterministic: ties are broken by
    fixed keys and the ordering's name."""
    names = {b.name for b in buffers}
    allowed = {(o.out, o.inp): o.max_delta for o in overlaps if o.out in names and o.inp in names}
    best: tuple[int, str, dict[str, int]] | None = None
    for name, key in sorted(_ORDERS.items()):
        offsets, arena = _first_fit(sorted(buffers, key=key), allowed)
        if best is None or (arena, name) < (best[0], best[1]):
            best = (arena, name, offsets)
    assert best is not None
    arena, _, offsets = best
    steps = sorted({b.start for b in buffers} | {b.end for b in buffers})
    peak = max((sum(_align(max(b.size, 1)) for b in buffers if b.start <= s <= b.end) for s in steps), default=0)
    sizes = {b.name: b.size for b in buffers}
    used = [o for o in overlaps if (o.out, o.inp) in allowed
            and offsets[o.out] < offsets[o.inp] + sizes[o.inp] and offsets[o.inp] < offsets[o.out] + sizes[o.out]]
    return MemoryPlan(
        offsets=offsets,
        sizes=sizes,
        lifetimes={b.name: (b.start, b.end) for b in buffers},
        arena_bytes=arena,
        peak_live_bytes=peak,
        in_place=used,
    )


def program_buffers(prog: Program, external_io: bool = False) -> tuple[list[Buffer], list[str]]:
    """Lifetimes of the program's storage roots. Step i is call i; inputs are live from step -1,
    outputs until step len(calls). Scratch buffers live only during their call."""
    n = len(prog.calls)
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for name in prog.inputs:
        start[prog.storage_root(name)] = -1
    for i, call in enumerate(prog.calls):
        for t in call.inputs:
            if prog.tensors[t].kind == "weight":
                continue
            root = prog.storage_root(t)
            end[root] = max(end.get(root, i), i)
        for t in call.outputs + call.scratch:
            root = prog.storage_root(t)
            start.setdefault(root, i)
            end[root] = max(end.get(root, i), i)
    for name in prog.outputs:
        end[prog.storage_root(name)] = n
    external = []
    buffers = []
    for root in sorted(start, key=lambda r: (start[r], r)):
        t = prog.tensors[root]
        if external_io and t.kind in ("input", "output"):
            external.append(root)
            continue
        buffers.append(Buffer(root, t.nbytes, start[root], end.get(root, start[root])))
    return buffers, external


def plan_program(prog: Program, external_io: bool = False, overlaps: list[Overlap] = ()) -> MemoryPlan:
    buffers, external = program_buffers(prog, external_io)
    ends = {b.name: b.end for b in buffers}
    starts = {b.name: b.start for b in buffers}
    # an in-place pair is valid only where the input dies at the call that creates the output
    valid = [o for o in overlaps if o.inp in ends and o.out in starts and ends[o.inp] == starts[o.out]
             and prog.tensors[o.inp].kind not in ("output",)]
    plan = plan_buffers(buffers, valid)
    plan.external = external
    return plan
