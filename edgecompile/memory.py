"""Static memory planner: every activation, graph input/output and kernel scratch buffer gets an
offset inside one arena, computed from liveness.

Buffers whose lifetimes overlap never share bytes; the others may. Placement is first fit (lowest
offset that fits between already placed, simultaneously live buffers) under several orderings,
greedy-by-size among them (the strategy TFLite Micro uses); the smallest arena wins. On
chain-like CNN graphs this reaches the lower bound (the largest set of simultaneously live
bytes) or comes close.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .program import Program

ALIGN = 16


@dataclass(frozen=True)
class Buffer:
    name: str
    size: int            # bytes
    start: int           # first step at which the buffer holds live data (written)
    end: int             # last step at which it is read (inclusive)


@dataclass
class MemoryPlan:
    offsets: dict[str, int]          # buffer (storage root) name -> arena offset
    sizes: dict[str, int]
    lifetimes: dict[str, tuple[int, int]]
    arena_bytes: int
    peak_live_bytes: int             # lower bound: max over steps of bytes live at that step
    external: list[str] = field(default_factory=list)   # roots kept outside the arena (user I/O)

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of simultaneously live buffers whose byte ranges intersect (must be empty)."""
        bad = []
        names = sorted(self.offsets)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                (s1, e1), (s2, e2) = self.lifetimes[a], self.lifetimes[b]
                if s1 <= e2 and s2 <= e1:
                    o1, o2 = self.offsets[a], self.offsets[b]
                    if o1 < o2 + self.sizes[b] and o2 < o1 + self.sizes[a]:
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


def _first_fit(order: list[Buffer]) -> tuple[dict[str, int], int]:
    placed: list[tuple[int, int, Buffer]] = []   # (offset, aligned size, buffer)
    offsets: dict[str, int] = {}
    for buf in order:
        size = _align(max(buf.size, 1))
        conflicts = sorted(
            (off, sz) for off, sz, other in placed if other.start <= buf.end and buf.start <= other.end
        )
        offset = 0
        for off, sz in conflicts:
            if offset + size <= off:
                break
            offset = max(offset, off + sz)
        offsets[buf.name] = offset
        placed.append((offset, size, buf))
    return offsets, max((off + sz for off, sz, _ in placed), default=0)


def plan_buffers(buffers: list[Buffer]) -> MemoryPlan:
    """Assign offsets to buffers: first-fit placement under a few orderings (largest first,
    largest size x lifetime first, program order, longest-lived first); the smallest arena wins.
    Deterministic: ties are broken by fixed keys and the ordering's name."""
    best: tuple[int, str, dict[str, int]] | None = None
    for name, key in sorted(_ORDERS.items()):
        offsets, arena = _first_fit(sorted(buffers, key=key))
        if best is None or (arena, name) < (best[0], best[1]):
            best = (arena, name, offsets)
    assert best is not None
    arena, _, offsets = best
    steps = sorted({b.start for b in buffers} | {b.end for b in buffers})
    peak = max((sum(_align(max(b.size, 1)) for b in buffers if b.start <= s <= b.end) for s in steps), default=0)
    return MemoryPlan(
        offsets=offsets,
        sizes={b.name: b.size for b in buffers},
        lifetimes={b.name: (b.start, b.end) for b in buffers},
        arena_bytes=arena,
        peak_live_bytes=peak,
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


def plan_program(prog: Program, external_io: bool = False) -> MemoryPlan:
    buffers, external = program_buffers(prog, external_io)
    plan = plan_buffers(buffers)
    plan.external = external
    return plan
