"""The memory planning finds later patch stages by itself (compiler._extend_stages): where a plan's
arena peaks after its patch stage, a later stage starts at that stage's output and bands the next
resolutions, stage after stage, cached, narrow or recomputed halo rows, and the choice is judged on
the lowered plans' peak RAM and predicted instructions (codegen/cost.py).

The proxy: MobileNet V2 0.35 at 160x160, int8, mps2-an386, input streamed. Its first stage to the
20x20x16 block output (12 window layers in one-row bands, halo rows cached) leaves the 20x20
expansions whole after it, where the arena then peaks; one stage deeper (to 10x10x24 or 5x5x56)
holds many rows of the 80x80 and 40x40 tensors in its first band. Two stages beat both."""

import pytest

from edgecompile import compiler
from edgecompile.compiler import BuildOptions, _Plan
from edgecompile.ir.frontend import ModelOptions, load_model
from edgecompile.platforms.cortex_m import CortexM
from edgecompile.targets import load_target

PROXY = dict(width_mult=0.35, resolution=160, num_classes=10)
BOARD = "mps2-an386"
BUDGET = 56_000        # below every one-stage plan of the proxy (the least about 60 kB)
HAND = ((12, 1, "cached"), ((9, 1, "cached"),))      # the two-stage plan one would give by hand


def _lowered(plan, graph, target, options, tried):
    opts = plan.options(options)
    plan.low = compiler._lower(graph, target, opts, lambda m: None)
    plan.estimate = compiler._estimate(target, plan.low)
    compiler._predict(plan, target, opts)
    tried.append(plan)
    return plan



def _extend(graph, target, options, tried, plain, budget=None):
    """compiler._extend_stages over the plans in `tried` as the planner runs it: plans lowered as
    they are scanned, the instruction bound from the plain plan (the limit, or with a RAM budget
    the aim). Returns that bound."""
    macs = sum(plain.low.infos[s].macs for s in plain.low.call_symbols)
    bound = compiler.MAX_INSTRUCTIONS * plain.predicted / (1 + target.cost.error)

    def scan(plans, limit, skip=lambda p: False):
        for p in plans:
            if len(tried) < limit and p.low is None:
                _lowered(p, graph, target, options, tried)

    args = (graph, target, options, tried, scan, plain.predicted, plain.predicted / macs, target.cost.coefficients())
    if budget is None:
        compiler._extend_stages(*args, bound, None, lambda m: None)
    else:
        compiler._extend_stages(*args, None, budget, lambda m: None, aim=bound)
    return bound


def test_a_later_stage_is_found_where_the_arena_peaks_after_the_first(monkeypatch):
    """Planning only (no C compiled). From a one-stage plan whose arena peaks after its stage, the
    search adds a later stage at the stage's output: the plan it finds has two stages, peaks lower
    than the one-stage plan (predicted peak RAM) and than every single stage's cut it tried, is
    predicted within issue 13's 1.15x of the plain plan's instructions (less the model's error),
    and equals or beats the hand-given two-stage plan on both. Kept short for the default run: one
    band height and the two cheapest later stages per step (the slow test below runs the whole
    search)."""
    monkeypatch.setattr(compiler, "LATER_ROWS", (1,))
    monkeypatch.setattr(compiler, "MAX_STAGE_CANDIDATES", 2)
    source = load_model("mobilenet_v2", ModelOptions(**PROXY))
    target = load_target(BOARD)
    options = BuildOptions(quant="int8", compile=False, compare_unfused=False, calibration_samples=4, patches="min")
    graph, _ = compiler._graph(source, target, options, lambda m: None)
    tried: list = []
    plain = _lowered(_Plan(None, False, 0), graph, target, options, tried)
    seed = _lowered(_Plan(HAND[0], True, 0, dwpw_rows=1), graph, target, options, tried)
    tops = compiler._segment_tops(seed.low)
    assert len(tops) == 2 and tops[1] > tops[0] and compiler._tail_peaks(seed), tops
    before = compiler._LOWERINGS[0]
    bound = _extend(graph, target, options, tried, plain)
    assert compiler._LOWERINGS[0] - before <= 2 * (compiler.MAX_STAGES - 1)      # bounded
    staged = [p for p in tried if p.later]
    assert staged and all(p.patch == HAND[0] for p in staged)
    found = min((p for p in staged if p.floor <= bound), key=lambda p: (compiler._peak(p), p.floor))
    assert len(found.later) >= 1 and compiler._peak(found) < compiler._peak(seed)
    # every stage of the plan found is a stage of the lowered program, in order, and ends where a
    # later one starts
    ranges = compiler._stage_ranges(found.low)
    assert len(ranges) == 1 + len(found.later) and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert found.low.patch_plan.second_stage["layers"] == found.later[0][0]
    # predicted: within the bound, and what the recomputed MACs and copies add over the plain plan
    assert plain.predicted < found.floor <= found.predicted and found.floor <= bound
    rec = found.record(plain.predicted)
    assert rec["later_stages"] == [list(st) for st in found.later] and rec["peak_ram_estimate"] == compiler._peak(found)
    # the hand-given plan: found (the same), or beaten on peak RAM at no more predicted instructions
    hand = next((p for p in staged if (p.patch, p.later) == HAND), None)
    if hand is None:
        hand = _lowered(_Plan(HAND[0], True, 0, dwpw_rows=1, later=HAND[1]), graph, target, options, tried)
    assert (compiler._peak(found), found.floor) <= (compiler._peak(hand), hand.floor), (found.describe(), hand.describe())


@pytest.mark.slow
def test_budget_plan_with_later_stages_measured_on_the_board(tmp_path):
    """`--ram-budget` below every one-stage plan of the proxy (the least, 12 layers in one-row
    bands with cached halo rows, about 60 kB): the whole search (one-stage plans, then later
    stages where the arena peaks after the stage, then lean windows and one-row tiles trimmed to
    where RAM peaks) picks a plan of two or more stages. Built and run on the emulated mps2-an386
    beside the plain plan, in this test: measured peak RAM (static RAM of the linked firmware +
    stack used) <= the budget, emulator instructions per inference <= 1.15x the plain plan's, the
    same int8 bytes as the host build and the kernel graph on TVM's VM."""
    from test_budget import plain_and_budget_runs

    source = load_model("mobilenet_v2", ModelOptions(**PROXY))
    target = load_target(BOARD)
    runs = plain_and_budget_runs(source, target, tmp_path, BUDGET, calibration_samples=20)
    rep, res = runs["budget"]
    planning = rep["memory_planning"]
    chosen = planning["chosen"]
    assert chosen["later_stages"] and rep["patch_plan"]["second_stage"], chosen
    # no one-stage plan tried fits the budget
    assert all(p["peak_ram_estimate"] > BUDGET for p in planning["tried"] if not p["later_stages"])
    peak = rep["ram_bytes"] + res["stack_used_bytes"]
    ratio = res["instructions_per_inference"] / runs["plain"][1]["instructions_per_inference"]
    print(f"budget plan {chosen['patch']} + {chosen['later_stages']}: peak RAM {peak:,} B (plain "
          f"{runs['plain'][0]['ram_bytes'] + runs['plain'][1]['stack_used_bytes']:,} B), {ratio:.3f}x the plain plan's "
          f"instructions ({res['instructions_per_inference']:,} / {runs['plain'][1]['instructions_per_inference']:,}), "
          f"predicted {chosen['predicted_ratio']}x, {planning['lowerings']} lowerings")
    assert peak <= BUDGET, (peak, chosen)
    assert ratio <= compiler.MAX_INSTRUCTIONS, (ratio, chosen)


@pytest.mark.slow   # 37-177 s; the planner's later stages stay tested by test_a_later_stage_is_found_where_the_arena_peaks_after_the_first
def test_budget_seeds_later_stages_from_the_cheapest_stage_that_fits(monkeypatch):
    """Planning only (no C compiled), --ram-budget below every one-stage plan of the proxy: of the
    first stages whose arena peaks after them, the seed of later stages is the one of fewest
    predicted instructions whose stage itself fits the budget (12 layers, halo rows cached), not the
    one whose stage reaches least far into the arena (narrow halos: it recomputes the expansions'
    halo rows, about 6% more predicted instructions, and later stages only add to that). The search
    stops at the first step with a plan that fits, which is the cheapest fitting plan it tried and
    is predicted within issue 13's 1.15x (less the model's error); candidates that cannot be cheaper
    are not lowered. Was: the narrow seed, every plan found 1.07x or more."""
    monkeypatch.setattr(compiler, "LATER_ROWS", (1,))
    source = load_model("mobilenet_v2", ModelOptions(**PROXY))
    target = load_target(BOARD)
    options = BuildOptions(quant="int8", compile=False, compare_unfused=False, calibration_samples=4,
                           ram_budget=BUDGET)
    graph, _ = compiler._graph(source, target, options, lambda m: None)
    tried: list = []
    plain = _lowered(_Plan(None, False, 0), graph, target, options, tried)
    cached = _lowered(_Plan((12, 1, "cached"), True, 0, dwpw_rows=1), graph, target, options, tried)
    narrow = _lowered(_Plan((12, 1, "narrow"), True, 0, dwpw_rows=1), graph, target, options, tried)
    # both peak after their stage, over the budget; the narrow stage reaches less far, at more instructions
    for seed in (cached, narrow):
        assert compiler._tail_peaks(seed) and compiler._peak(seed) > BUDGET
        assert compiler._reach_fits(seed, BUDGET)
    assert compiler._reach(narrow) < compiler._reach(cached) * (1 - compiler.STAGE_TOP_SLACK)
    assert narrow.floor > cached.floor * 1.03
    before = compiler._LOWERINGS[0]
    bound = _extend(graph, target, options, tried, plain, BUDGET)
    staged = [p for p in tried if p.later]
    assert staged and all(p.patch == cached.patch for p in staged), [p.describe() for p in staged]
    assert "seed of later stages" in cached.note and narrow.note is None
    fitting = [p for p in staged if compiler._fits(p, BUDGET)]
    assert fitting, [(p.describe(), compiler._peak(p)) for p in staged]
    best = min(fitting, key=lambda p: p.floor)
    assert best.floor <= bound and best.floor < narrow.floor
    # one step: the search stopped where a plan fits; not every candidate of the step was lowered
    assert {len(p.later) for p in staged} == {1}
    assert compiler._LOWERINGS[0] - before < compiler.MAX_STAGE_CANDIDATES
