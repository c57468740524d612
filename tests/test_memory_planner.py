"""The static memory planner never overlaps live data and stays within its bounds."""

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecompile.codegen.memory import ALIGN, Buffer, plan_buffers, plan_program
from edgecompile.ir.program import KernelCall, Program, Tensor


@st.composite
def random_buffers(draw):
    n = draw(st.integers(1, 40))
    steps = draw(st.integers(1, 30))
    bufs = []
    for i in range(n):
        start = draw(st.integers(-1, steps))
        end = draw(st.integers(start, steps))
        size = draw(st.integers(1, 5000))
        bufs.append(Buffer(f"b{i}", size, start, end))
    return bufs


def _aligned(n):
    return (n + ALIGN - 1) // ALIGN * ALIGN


@settings(max_examples=300, deadline=None)
@given(random_buffers())
def test_live_buffers_never_overlap(bufs):
    plan = plan_buffers(bufs)
    assert plan.overlaps() == []
    for b in bufs:
        assert plan.offsets[b.name] % ALIGN == 0
        assert plan.offsets[b.name] + b.size <= plan.arena_bytes


@settings(max_examples=300, deadline=None)
@given(random_buffers())
def test_arena_between_live_set_and_total(bufs):
    plan = plan_buffers(bufs)
    assert plan.arena_bytes >= plan.peak_live_bytes
    assert plan.arena_bytes <= sum(_aligned(b.size) for b in bufs)


@st.composite
def random_graphs(draw):
    """A random DAG of kernel calls over tensors, with reshape views and scratch."""
    n_calls = draw(st.integers(1, 25))
    tensors = {"input": Tensor("input", (draw(st.integers(1, 300)),), "float32", "input")}
    names = ["input"]
    calls = []
    for i in range(n_calls):
        k = draw(st.integers(1, min(3, len(names))))
        ins = draw(st.lists(st.sampled_from(names), min_size=1, max_size=k, unique=True))
        out = f"t{i}"
        tensors[out] = Tensor(out, (draw(st.integers(1, 300)),), "float32", "activation")
        scratch = []
        if draw(st.booleans()):
            s = f"s{i}"
            tensors[s] = Tensor(s, (draw(st.integers(1, 900)),), "uint8", "scratch")
            scratch.append(s)
        calls.append(KernelCall(f"k{i}", ins, [out], scratch))
        names.append(out)
        if draw(st.booleans()):   # a reshape view of the new tensor
            v = f"v{i}"
            tensors[v] = Tensor(v, tensors[out].shape, "float32", "activation", alias_of=out)
            names.append(v)
    outputs = [names[-1]]
    tensors[outputs[0]].kind = "output"
    return Program(["input"], outputs, tensors, {}, calls)


@settings(max_examples=200, deadline=None)
@given(random_graphs())
def test_program_plan_respects_every_use(prog):
    plan = plan_program(prog)
    assert plan.overlaps() == []
    # a tensor's storage is untouched from its write until its last read
    for i, call in enumerate(prog.calls):
        for t in call.inputs:
            root = prog.storage_root(t)
            s, e = plan.lifetimes[root]
            assert s < i <= e or (s == -1 and i <= e)
        for t in call.outputs + call.scratch:
            s, e = plan.lifetimes[prog.storage_root(t)]
            assert s <= i <= e
    out = prog.storage_root(prog.outputs[0])
    assert plan.lifetimes[out][1] == len(prog.calls)


def test_chain_reuses_memory():
    # a -> b -> c -> d: only two neighbours are ever live, so the arena is two buffers
    tensors = {n: Tensor(n, (256,), "float32", "activation") for n in "abcd"}
    tensors["a"].kind, tensors["d"].kind = "input", "output"
    calls = [KernelCall("k", [x], [y]) for x, y in ("ab", "bc", "cd")]
    plan = plan_program(Program(["a"], ["d"], tensors, {}, calls))
    assert plan.arena_bytes == 2 * 1024 == plan.peak_live_bytes


def test_external_io_leaves_input_and_output_out_of_arena():
    tensors = {n: Tensor(n, (256,), "float32", "activation") for n in "abc"}
    tensors["a"].kind, tensors["c"].kind = "input", "output"
    calls = [KernelCall("k", ["a"], ["b"]), KernelCall("k", ["b"], ["c"])]
    plan = plan_program(Program(["a"], ["c"], tensors, {}, calls), external_io=True)
    assert sorted(plan.external) == ["a", "c"] and plan.arena_bytes == 1024
