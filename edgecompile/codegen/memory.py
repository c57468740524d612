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

import numpy as np

from ..ir.kernel import KernelInfo
from ..ir.operators import Kind
from ..ir.program import DTYPE_BYTES, KernelCall, Program, Tensor

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
    it overwrites them (MCUNet/TinyEngine-style in-place execution). `interleaved`: `inp` is
    still read after `out` is first written (a patch stage reads its input and writes its output
    band by band); `max_delta` then covers every call in between."""

    out: str
    inp: str
    max_delta: int
    interleaved: bool = False


def streaming_max_delta(in_rows: int, in_row_bytes: int, out_rows: int, out_row_bytes: int,
                        tile_rows: int, stride: int, kernel: int, interleaved: bool = False) -> int:
    """Largest offset(out) - offset(in) that never overwrites input still to be read, for a
    kernel that produces `tile_rows` output rows at a time after reading the input rows of that
    tile's window. Conservative in the padding: assumes the top padding is kernel - 1 rows.
    `interleaved`: the kernel may write a tile's output rows before it has read all of that
    tile's window (KernelInfo.interleaves_rows), so the tile's own window must survive its writes."""
    pad = kernel - 1
    best = math.inf
    for t in range(out_rows // tile_rows):
        # the first input row still to be read once tile t's rows are (being) written
        need = (t if interleaved else t + 1) * tile_rows * stride - pad
        if need >= in_rows:
            break
        best = min(best, max(need, 0) * in_row_bytes - (t + 1) * tile_rows * out_row_bytes)
    return int(best) if best != math.inf else 1 << 40


def _whole(prog: Program, name: str) -> bool:
    """The tensor covers its whole storage (not a band view at an offset)."""
    return prog.storage_offset(name) == 0 and prog.tensors[name].nbytes == prog.tensors[prog.storage_root(name)].nbytes


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
        # only whole tensors: a kernel writing a row band of a larger tensor (a patch stage) does
        # not stream over the tensor's other rows
        if info.streams_rows and all(_whole(prog, t) for t in (call.inputs[0], call.outputs[0])) \
                and (info.kind != Kind.CONV_DW or _windowed_input(prog, call, info)) \
                and (info.kind != Kind.DWPW or _nhwc_dw_input(prog, call, info)):
            inp, out = prog.tensors[call.inputs[0]], prog.tensors[call.outputs[0]]
            _, hin, win, cin = inp.shape
            _, h, w, cout = out.shape
            in_row = win * cin * DTYPE_BYTES[inp.dtype]     # bytes of one NHWC row, in each tensor's own type
            out_row = w * cout * DTYPE_BYTES[out.dtype]
            delta = streaming_max_delta(hin, in_row, h, out_row, info.rows, info.stride[0], info.kernel[0],
                                        info.interleaves_rows)
            overlaps.append(Overlap(prog.storage_root(call.outputs[0]), prog.storage_root(call.inputs[0]), delta))
    return overlaps


def _nhwc_dw_input(prog: Program, call: KernelCall, info: KernelInfo) -> bool:
    """A fused dw+pw call whose input is NHWC rows of the depthwise channels: not, e.g., the NCHW
    graph input read through a transpose fused into the kernel (channel planes, not rows: writing
    output rows over it destroyed the planes still to be read). A graph input whose shape cannot
    tell the two layouts apart (as many channels as rows and columns) is not planned in place."""
    shape = prog.tensors[call.inputs[0]].shape
    out = prog.tensors[call.outputs[0]].shape
    if len(shape) != 4 or len(out) != 4 or shape[3] != info.dw_channels:
        return False
    (k, _), (s, _) = info.kernel, info.stride
    if not (out[1] - 1) * s + 1 <= shape[1] <= out[1] * s + k:
        return False
    return not (call.inputs[0] in prog.inputs and shape[1] == shape[2] == shape[3])


def _windowed_input(prog: Program, call: KernelCall, info: KernelInfo) -> bool:
    """A standalone depthwise call whose only activation input is the tensor its windows read
    (an inlined elementwise producer may pass it more than once, as SiLU does): NHWC, the
    output's channels, as many rows as the output rows need at its stride (not, e.g., a one-row
    tensor broadcast into every row). Anything else is not planned in place."""
    acts = list(dict.fromkeys(t for t in call.inputs if prog.tensors[t].kind != "weight"))
    if acts != [call.inputs[0]] or len(prog.tensors[acts[0]].shape) != 4 or len(prog.tensors[call.outputs[0]].shape) != 4:
        return False
    (_, hin, _, cin), (_, h, _, cout) = prog.tensors[acts[0]].shape, prog.tensors[call.outputs[0]].shape
    (k, _), (s, _) = info.kernel, info.stride
    return cin == cout and (h - 1) * s + 1 <= hin <= h * s + k


def patch_overlaps(prog: Program) -> list[Overlap]:
    """The overlaps a patch stage allows between its output and its input. The stage output (a
    tensor assembled from row-band views, `Program.assembled`) is written band by band while the
    calls of later bands still read the input: with offset(out) = offset(inp) + delta, every byte
    a call writes into the output must lie below every input byte read by that call or a later
    one. The input is any older buffer the stage's calls read and that dies within the stage."""
    overlaps = []
    for whole in prog.assembled:
        root = prog.storage_root(whole)
        writes = [(i, t) for i, c in enumerate(prog.calls) for t in c.outputs if prog.storage_root(t) == root]
        if not writes:
            continue
        first, last = writes[0][0], writes[-1][0]
        reads: dict[str, list[tuple[int, int]]] = {}     # input root -> (call, first byte read)
        born: dict[str, int] = {}
        for i, c in enumerate(prog.calls):
            for t in c.outputs + c.scratch:
                born.setdefault(prog.storage_root(t), i)
            for t in c.inputs:
                r = prog.storage_root(t)
                if prog.tensors[t].kind != "weight" and r != root:
                    reads.setdefault(r, []).append((i, prog.storage_offset(t)))
        for inp, uses in sorted(reads.items()):
            # older than the stage output, dead by its last band, read by a later band than the first
            if born.get(inp, -1) >= first or max(i for i, _ in uses) > last or not any(i > first for i, _ in uses):
                continue
            delta = 1 << 40
            for w, t in writes:
                end = prog.storage_offset(t) + prog.tensors[t].nbytes
                later = [off for i, off in uses if i >= w]
                if later:
                    delta = min(delta, min(later) - end)
            overlaps.append(Overlap(root, inp, delta, interleaved=True))
    return overlaps + copy_overlaps(prog)


def copy_overlaps(prog: Program) -> list[Overlap]:
    """A cached-halo patch stage (`ir/patches.py`) keeps each inner tensor in one buffer per band,
    [halo rows copied from the end of the previous band's buffer | new rows]. The copy
    (`copy_rows`, front to back) is the last read of the previous buffer and the first write of
    the next: the next may lie over the previous one (a ring of line buffers) as long as the copy's
    destination starts no later than its source, offset(out) - offset(inp) <= source offset -
    destination offset."""
    overlaps = []
    for call in prog.calls:
        if call.builtin != "copy_rows":
            continue
        src, dst = call.inputs[0], call.outputs[0]
        overlaps.append(Overlap(prog.storage_root(dst), prog.storage_root(src),
                                prog.storage_offset(src) - prog.storage_offset(dst)))
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
    if (a, b) not in allowed and (b, a) not in allowed:
        return False
    # every allowed direction must hold (the same answer whichever buffer is asked about first)
    return all(d not in allowed or off <= allowed[d] for d, off in (((a, b), oa - ob), ((b, a), ob - oa)))


def _room_below(order: list[Buffer], allowed: dict[tuple[str, str], int], depth: int) -> dict[str, int]:
    """For each buffer, the bytes below its offset that its next `depth` in-place successors
    would use: an output may sit up to -max_delta bytes before its input, its own output before
    it, and so on."""
    room = {b.name: 0 for b in order}
    for _ in range(depth):
        nxt = dict(room)
        for (out, inp), delta in allowed.items():
            nxt[inp] = max(nxt[inp], -(delta // ALIGN * ALIGN) + room[out])
        room = nxt
    return room


def _first_fit(order: list[Buffer], allowed: dict[tuple[str, str], int],
               reserve: int = 0) -> tuple[dict[str, int], int]:
    """Place `order` one buffer at a time at the lowest offset that fits; a buffer with an in-place
    partner already placed also tries the offset as far into it as the overlap allows. With
    `reserve` > 0, a buffer first tries offsets that leave room below it for its next `reserve`
    in-place successors (each may sit before its input)."""
    sizes = {b.name: _align(max(b.size, 1)) for b in order}
    life = {b.name: (b.start, b.end) for b in order}
    partners: dict[str, list[tuple[str, int, int]]] = {}
    for (out, inp), delta in allowed.items():
        partners.setdefault(out, []).append((inp, delta, +1))
        partners.setdefault(inp, []).append((out, delta, -1))
    room = _room_below(order, allowed, reserve) if reserve else {}
    offsets: dict[str, int] = {}
    for buf in order:
        live = [(n, offsets[n]) for n in offsets if life[n][0] <= buf.end and buf.start <= life[n][1]]
        candidates = {0, room.get(buf.name, 0)} | {off + sizes[n] for n, off in live}
        into = set()
        for other, delta, sign in partners.get(buf.name, []):
            if other in offsets:
                # as far into the partner as the streaming order allows
                cand = offsets[other] + delta if sign > 0 else offsets[other] - delta
                cand = cand // ALIGN * ALIGN if sign > 0 else -(-cand // ALIGN) * ALIGN
                if cand >= 0:
                    into.add(cand)
        need = room.get(buf.name, 0)
        # with `reserve`: into a placed partner first, then offsets that leave the room, then the rest
        rank = (lambda c: (c not in into, c < need, c)) if reserve else (lambda c: c)
        for cand in sorted(candidates | into, key=rank):
            if all(_compatible(buf.name, cand, n, off, sizes, life, allowed) for n, off in live):
                offsets[buf.name] = cand
                break
    return offsets, max((offsets[n] + sizes[n] for n in offsets), default=0)


def plan_buffers(buffers: list[Buffer], overlaps: list[Overlap] = ()) -> MemoryPlan:
    """Assign offsets to buffers: first-fit placement under a few orderings (largest first,
    largest size x lifetime first, program order, longest-lived first), each also leaving room
    below in-place chains; the smallest arena wins. `overlaps` lists in-place pairs the planner
    may overlap. Deterministic: ties are broken by fixed keys, plain placement first, the
    ordering's name."""
    names = {b.name for b in buffers}
    allowed = {(o.out, o.inp): o.max_delta for o in overlaps if o.out in names and o.inp in names}
    best: tuple[int, int, str, dict[str, int]] | None = None
    for reserve in (0, 1, 2, 4, 8) if allowed else (0,):
        for name, key in sorted(_ORDERS.items()):
            offsets, arena = _first_fit(sorted(buffers, key=key), allowed, reserve)
            if best is None or (arena, reserve, name) < best[:3]:
                best = (arena, reserve, name, offsets)
    assert best is not None
    arena, _, _, offsets = best
    steps = sorted({b.start for b in buffers} | {b.end for b in buffers})
    peak = max((sum(_align(max(b.size, 1)) for b in buffers if b.start <= s <= b.end) for s in steps), default=0)
    sizes = {b.name: b.size for b in buffers}
    life = {b.name: (b.start, b.end) for b in buffers}
    used = [o for o in overlaps if (o.out, o.inp) in allowed
            and life[o.out][0] <= life[o.inp][1] and life[o.inp][0] <= life[o.out][1]
            and offsets[o.out] < offsets[o.inp] + sizes[o.inp] and offsets[o.inp] < offsets[o.out] + sizes[o.out]]
    return MemoryPlan(
        offsets=offsets,
        sizes=sizes,
        lifetimes={b.name: (b.start, b.end) for b in buffers},
        arena_bytes=arena,
        peak_live_bytes=peak,
        in_place=used,
    )


def arena_peak(plan: MemoryPlan) -> tuple[int, int]:
    """(step, bytes): the step at which the buffers live in the arena reach furthest, and how far."""
    best = (-1, 0)
    for step in sorted({s for s, _ in plan.lifetimes.values()} | {e for _, e in plan.lifetimes.values()}):
        top = max((plan.offsets[n] + plan.sizes[n] for n, (s, e) in plan.lifetimes.items() if s <= step <= e),
                  default=0)
        if top > best[1]:
            best = (step, top)
    return best


def live_at(prog: Program, plan: MemoryPlan, step: int, symbols: list[str] | None = None) -> list[dict]:
    """The arena buffers live at `step` (a call index; -1 the graph input, len(calls) the output),
    highest offset first: name, arena offset and bytes, the shape and dtype of the root tensor (an
    int32 tensor costs 4 bytes per element), its kind, and the calls that write it first and read
    it last (with their kernel symbols when `symbols` is given). What `inspect` shows at the peak."""
    def who(i: int) -> str:
        if 0 <= i < len(prog.calls):
            return f"{i} ({symbols[i] if symbols else prog.calls[i].kernel})"
        return "graph input" if i < 0 else "graph output"

    live = []
    for name, (s, e) in plan.lifetimes.items():
        if not s <= step <= e or name not in plan.offsets:
            continue
        t = prog.tensors[name]
        live.append({"name": name, "offset": plan.offsets[name], "bytes": plan.sizes[name],
                     "shape": list(t.shape), "dtype": t.dtype, "kind": t.kind,
                     "written_by": who(s), "last_read_by": who(e)})
    return sorted(live, key=lambda b: (-(b["offset"] + b["bytes"]), b["name"]))


def program_buffers(prog: Program, external_io: bool = False) -> tuple[list[Buffer], list[str]]:
    """Lifetimes of the program's storage roots. Step i is call i; inputs are live from step -1,
    outputs until step len(calls). Scratch buffers live only during their call. A streamed input
    (`ir/stream.py`) has no storage: its rows arrive in buffers of their own."""
    n = len(prog.calls)
    start: dict[str, int] = {}
    end: dict[str, int] = {}
    for name in prog.inputs:
        if name not in prog.streamed:
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
    # (or, for a patch stage, within the calls whose writes `max_delta` accounts for)
    valid = [o for o in overlaps if o.inp in ends and o.out in starts
             and (ends[o.inp] == starts[o.out] or (o.interleaved and ends[o.inp] >= starts[o.out]))
             and prog.tensors[o.inp].kind not in ("output",)]
    plan = plan_buffers(buffers, valid)
    plan.external = external
    return plan


def replay_plan(prog: Program, plan: MemoryPlan, infos: list[KernelInfo], limit: int = 10) -> list[str]:
    """Run the program's memory traffic over a model of the arena, byte by byte, and list what
    goes wrong (empty: the plan is sound). Each byte remembers which storage root wrote it last;
    a read of a tensor finds its own root in every byte or is a violation. A call writes its
    scratch first, then reads its inputs, writes its outputs and reads its inputs again (kernels
    may read in any order), except for a kernel that streams rows over a whole input
    (`streaming_overlaps`): it reads each tile's input window before writing the tile's rows
    (with the widest window any top padding could give); a standalone depthwise, whose reads and
    writes interleave within a row, writes each row before it reads that row's window. Independent of how the planner chose
    the offsets: it checks row-band views, in-place pairs and patch-stage overlaps alike."""
    roots = sorted(plan.offsets)
    ident = {r: i for i, r in enumerate(roots)}
    owner = np.full(max(plan.arena_bytes, 1), -1, np.int32)
    bad: list[str] = []

    def span(t: str) -> tuple[int, int] | None:
        root = prog.storage_root(t)
        if root not in plan.offsets:
            return None                     # kept by the caller (external I/O)
        lo = plan.offsets[root] + prog.storage_offset(t)
        return lo, lo + prog.tensors[t].nbytes

    def write(t: str, lo: int = 0, hi: int | None = None) -> None:
        sp = span(t)
        if sp is not None:
            owner[sp[0] + lo: sp[0] + (sp[1] - sp[0] if hi is None else hi)] = ident[prog.storage_root(t)]

    def read(i: int, t: str, lo: int = 0, hi: int | None = None) -> None:
        sp = span(t)
        if sp is None or len(bad) >= limit:
            return
        seg = owner[sp[0] + lo: sp[0] + (sp[1] - sp[0] if hi is None else hi)]
        wrong = np.nonzero(seg != ident[prog.storage_root(t)])[0]
        if wrong.size:
            by = int(seg[wrong[0]])
            bad.append(f"call {i} reads {t} (byte {sp[0] + lo + int(wrong[0])}) after "
                       f"{roots[by] if by >= 0 else 'nothing'} wrote there")

    for name in prog.inputs:
        write(name)
    streamed = {(o.out, o.inp) for o in streaming_overlaps(prog, infos)}
    for i, (call, info) in enumerate(zip(prog.calls, infos)):
        # each activation once: a kernel passed one tensor twice (an inlined SiLU) reads it as one
        acts = list(dict.fromkeys(t for t in call.inputs if prog.tensors[t].kind != "weight"))
        for t in call.scratch:
            write(t)
        out = call.outputs[0]
        first = acts[0] if acts else None
        if call.builtin == "copy_rows":
            # front to back, each word read before it is written: the destination may overlap
            # the source from below (`copy_overlaps`); read word by word as the C does
            n = prog.tensors[out].nbytes
            so, do = span(first), span(out)
            if so is not None and do is not None and do[0] > so[0] and do[0] < so[1]:
                bad.append(f"call {i} copies {first} to {out}, which overlaps it from above")
            for lo in range(0, n, 16):
                read(i, first, lo, min(n, lo + 16))
                write(out, lo, min(n, lo + 16))
            rest = []
        elif first is not None and (prog.storage_root(out), prog.storage_root(first)) in streamed:
            inp, o = prog.tensors[first], prog.tensors[out]
            ri, ro = inp.nbytes // inp.shape[1], o.nbytes // o.shape[1]
            (k, _), (s, _) = info.kernel, info.stride
            for t in range(o.shape[1] // info.rows):
                top = t * info.rows * s
                window = max(0, top - (k - 1)) * ri, min(inp.shape[1], top + (info.rows - 1) * s + k) * ri
                if info.interleaves_rows:       # the worst order: the tile's rows written before its window is read
                    write(out, t * info.rows * ro, (t + 1) * info.rows * ro)
                read(i, first, *window)
                if not info.interleaves_rows:
                    write(out, t * info.rows * ro, (t + 1) * info.rows * ro)
            rest = acts[1:]
        else:
            for t in acts:
                read(i, t)
            for t in call.outputs:
                write(t)
            rest = acts
        for t in rest:
            read(i, t)
    for name in prog.outputs:
        read(len(prog.calls), name)
    return bad
