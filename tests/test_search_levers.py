"""Issue 19's levers of ``autoslim`` (each an option, off by default): what each one does, on
synthetic data. The defaults' results are the goldens' (tests/test_search_identity.py)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from edgedyn.blocks.layout import Layout
from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.dynamic.groups import with_block_multiples
from edgedyn.errors import EdgedynError
from edgedyn.search import PathPoint, SearchConfig, levers, load_result, run_search
from edgedyn.search import train as T
from edgedyn.search.dist import Dist
from edgedyn.search.methods.autoslim import AutoslimOptions
from edgedyn.search.methods.usnet import USNetOptions
from edgedyn.search.pipeline import measure, start
from edgedyn.search.registry import variants
from edgedyn.search.reselect import Budget, pick, pick_nested
from test_search import MockLatency, small_config


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def net() -> DynamicNet:
    torch.manual_seed(0)
    return DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=8, min_groups=2)


def _config(out, **options) -> SearchConfig:
    return small_config(out, method="autoslim", train_epochs=2, final_epochs=1, holdout_fraction=0.3,
                        options=options)


def _searched(out, **options):
    """A method whose one-shot and search phases have run (selection and training not yet)."""
    method = start(_config(out, **options), MockLatency(), Dist())
    for phase in method.phases:
        getattr(method, phase)()
    return method


def _candidates(method):
    ctx = method.ctx
    points = method._candidates([replace(p, cost=ctx.price(p.spec)) for p in ctx.state.path])
    below = [b for b in ctx.budgets if ctx.limit(b) < ctx.select_full * (1 - 1e-9)]
    return points, below


def _state(net: DynamicNet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.model.state_dict().items()}


# -- the reserved rows ------------------------------------------------------------------------
def test_every_lever_has_its_reserved_row():
    v = variants()
    default = v["autoslim-final+latency"].overrides
    rows = {"autoslim-neighbour+latency": {"supernet_students": "neighbour"},
            "autoslim-ftfinal+latency": {"options": {"finalist_batches": 20}},
            "autoslim-usebudget+latency": {"options": {"use_budget_se": 1.0}},
            "autoslim-flat+latency": {"options": {"nested": False}},
            "autoslim-score2000+latency": {"score_samples": 2000},
            "autoslim-bncal+latency": {"options": {"final_bn": True}},
            "autoslim-grid16+latency": {"options": {"block_grid": True}},
            "autoslim-final2+latency": {"final_epochs": 2},
            "autoslim-mean+latency": {"options": {"sandwich_mean": True}},
            "autoslim-fill+latency": {"options": {"fill_budget": True}},
            "autoslim-meanfill+latency": {"options": {"sandwich_mean": True, "fill_budget": True}}}
    assert default["options"] == {"sandwich_mean": False}  # round 8's default, as it was run
    for name, lever in rows.items():  # round 8's default plus that lever alone
        want = {**default, **lever, "options": {**default["options"], **lever.get("options", {})}}
        assert v[name].overrides == want and v[name].cost == "latency", name
        SearchConfig(**v[name].overrides).validate()
    for lever in ("neighbour", "ftfinal", "usebudget", "flat", "score2000", "bncal"):  # the same levers on L6
        alone = v[f"autoslim-{lever}+latency"].overrides
        on_l6 = v[f"autoslim-mean-{lever}+latency"]
        assert on_l6.overrides == {**alone, "options": {**alone["options"], "sandwich_mean": True}}, lever
        assert on_l6.cost == "latency" and on_l6.doc.startswith("L6 and L"), lever
        SearchConfig(**on_l6.overrides).validate()
    assert v["usnet-mean"].overrides == {**v["usnet"].overrides, "options": {"sandwich_mean": True}}  # L6's baseline
    SearchConfig(**v["usnet-mean"].overrides).validate()
    # every autoslim row says which sandwich loss it ran with; L6 is the default now, US-Nets keeps its sum
    assert all("sandwich_mean" in (o.overrides.get("options") or {}) for k, o in v.items() if k.startswith("autoslim"))
    assert AutoslimOptions().sandwich_mean is True and USNetOptions().sandwich_mean is False


@pytest.mark.parametrize("key,value", [("neighbour_p", 0.0), ("finalists", 0), ("finalist_batches", -1),
                                       ("finalist_lr", float("nan")), ("use_budget_se", -1.0), ("nested", "no"),
                                       ("block_grid", 1), ("final_bn", None), ("sandwich_mean", "yes"),
                                       ("fill_budget", 0)])
def test_lever_options_are_checked_in_one_line(key, value):
    with pytest.raises(EdgedynError, match=key) as err:
        SearchConfig(method="autoslim", options={key: value}).validate()
    assert "\n" not in str(err.value)
    if key == "sandwich_mean":
        with pytest.raises(EdgedynError, match=key):
            SearchConfig(method="usnet", options={key: value}).validate()


# -- L6: each sandwich step's losses averaged -------------------------------------------------
def test_mean_sandwich_step_is_the_summed_step_divided_by_its_sub_nets(net):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, 8, 8, generator=gen), torch.randint(0, 10, (6,), generator=gen)
    grads, losses = [], []
    for mean in (False, True):
        students = T.uniform_students(net, torch.Generator().manual_seed(1))  # the same draws both times
        net.model.zero_grad(set_to_none=True)
        net.train()
        losses.append(float(T.sandwich_step(net, students, mean=mean)(x, y)))
        grads.append([p.grad.clone() for p in net.model.parameters() if p.grad is not None])
    n = 1 + len(T.uniform_students(net, torch.Generator().manual_seed(1))())  # the full net and its students
    assert n == 4 and losses[1] == pytest.approx(losses[0] / n, rel=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert torch.allclose(b, a / n, rtol=1e-4, atol=1e-7)
    net.model.zero_grad(set_to_none=True)
    net.eval()


# -- L1a: the one-shot phase over uniform widths and their neighbours --------------------------
def test_neighbour_students_are_usnets_widths_each_group_moved_at_most_one_step(net):
    uniform = T.uniform_students(net, torch.Generator().manual_seed(5))
    neighbour = T.neighbour_students(net, torch.Generator().manual_seed(5))
    still = T.neighbour_students(net, torch.Generator().manual_seed(5), p=1e-12)
    uniform_specs = {net.uniform_spec(r) for r in [x / 64 for x in range(1, 65)]}
    moved = 0
    for _ in range(40):
        u, nb, st = uniform(), neighbour(), still()
        assert nb[0] == u[0] and st == u  # US-Nets' draws (common random numbers)
        for a, b in zip(u[1:], nb[1:]):
            for g in net.groups:
                grid = g.widths_from()
                assert abs(grid.index(a[g.index]) - grid.index(b[g.index])) <= 1
            moved += b not in uniform_specs
    assert moved >= 40  # most of the 80 random students are not uniform


def test_the_neighbour_one_shot_phase_trains_non_uniform_students(tmp_path, monkeypatch):
    seen: list[SubnetSpec] = []
    orig = T.sandwich_step

    def spy(net, students, mean=False):
        def recorded():
            out = students()
            seen.extend(out)
            return out
        return orig(net, recorded, mean=mean)

    monkeypatch.setattr(T, "sandwich_step", spy)
    for students, expect_uniform in (("uniform", True), ("neighbour", False)):
        seen.clear()
        cfg = replace(_config(tmp_path / students), supernet_students=students)
        method = start(cfg, MockLatency(), Dist())
        method.pretrain()
        method.supernet()
        n = method.net
        uniform = {n.uniform_spec(r / 64) for r in range(1, 65)} | {n.full_spec()}
        assert seen and all(s in uniform for s in seen) is expect_uniform


# -- L1b / L3b: finalists re-scored -------------------------------------------------------------
def test_finalists_are_each_budgets_most_accurate_candidates():
    pts = [PathPoint(SubnetSpec((i,)), cost, acc, 0) for i, (cost, acc) in
           enumerate([(1.0, 0.5), (1.5, 0.7), (1.8, 0.6), (2.5, 0.9), (2.8, 0.4)])]
    got = levers.finalists(pts, [2.0, 3.0], 2)
    assert got == [SubnetSpec((1,)), SubnetSpec((2,)), SubnetSpec((3,))]


def test_fine_tuned_finalists_score_anew_and_the_shared_weights_come_back_bit_for_bit(tmp_path):
    method = _searched(tmp_path / "ft", finalist_batches=4, finalist_lr=0.3, finalists=2)
    points, below = _candidates(method)
    before, stats = _state(method.net), {k: dict(v) for k, v in method.net.bn_stats.items()}
    rescored = method._rescore(points, below)
    after = _state(method.net)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert method.net.bn_stats.keys() == stats.keys()
    finalists = set(levers.finalists(points, [method.ctx.limit(b) for b in below], 2))
    old = {p.spec: p.accuracy for p in points}
    changed = [p.spec for p in rescored if p.accuracy != old[p.spec]]
    assert changed and set(changed) <= finalists  # only finalists are re-scored, and fine-tuning moved them
    # without the lever nothing is re-scored
    method.options = replace(method.options, finalist_batches=0)
    assert method._rescore(points, below) == points


def test_final_bn_scores_finalists_as_the_final_measurement_does(tmp_path):
    method = _searched(tmp_path / "bn", final_bn=True, finalists=1)
    points, below = _candidates(method)
    rescored = {p.spec: p for p in method._rescore(points, below)}
    spec = levers.finalists(points, [method.ctx.limit(below[0])], 1)[0]
    measured = measure(method.ctx, [(below[0], rescored[spec])])[0]
    assert rescored[spec].accuracy == measured.holdout_accuracy


# -- L1c: the costlier candidate within noise ---------------------------------------------------
def _pts(*rows):
    return [PathPoint(SubnetSpec(w), cost, acc, 0) for w, cost, acc in rows]


def test_use_budget_takes_the_costliest_candidate_within_one_standard_error():
    budget = [Budget(2.0, "ms", "2ms")]
    # the case: 88.1 % (small) against 87.6 % (using the budget) on 500 images: SE 1.45 points
    pts = _pts(((2, 2), 1.0, 0.881), ((4, 3), 1.9, 0.876), ((3, 3), 1.5, 0.80))
    assert pick(pts, budget, 4.0, "ms")[0][1] is pts[0]
    assert levers.pick_using_budget(pts, budget, 4.0, "ms", n=500, z=1.0)[0][1] is pts[1]
    assert levers.pick_using_budget(pts, budget, 4.0, "ms", n=500, z=0.1)[0][1] is pts[0]  # outside 0.1 SE
    assert levers.pick_using_budget(pts, budget, 4.0, "ms", n=100_000, z=1.0)[0][1] is pts[0]  # SE 0.1 point


def test_use_budget_nested_keeps_a_chain_or_falls_back():
    budgets = [Budget(1.2, "ms", "a"), Budget(2.0, "ms", "b")]
    contains = lambda a, b: a.spec.contains(b.spec)
    pts = _pts(((1, 1), 1.0, 0.70), ((2, 1), 1.1, 0.695), ((2, 2), 1.9, 0.80), ((1, 3), 1.95, 0.805))
    got = levers.pick_using_budget(pts, budgets, 4.0, "ms", n=500, z=1.0, contains=contains)
    assert [p.spec.widths for _, p in got] == [(2, 1), (2, 2)]  # the costliest tied chain (not (1, 3))
    flat = levers.pick_using_budget(pts, budgets, 4.0, "ms", n=500, z=1.0)
    assert [p.spec.widths for _, p in flat] == [(2, 1), (1, 3)]
    lone = _pts(((1, 2), 1.0, 0.9), ((2, 1), 1.9, 0.95))  # the tied picks never nest
    assert levers.pick_using_budget(lone, budgets, 4.0, "ms", n=500, z=0.0, contains=contains) is None


def test_use_budget_in_the_method_picks_costlier_or_equal(tmp_path):
    method = _searched(tmp_path / "ub", use_budget_se=2.0)
    points, below = _candidates(method)
    using = method._pick(points, below)
    method.options = replace(method.options, use_budget_se=0.0)
    plain = method._pick(points, below)
    assert all(u.cost >= p.cost - 1e-12 for (_, u), (_, p) in zip(using, plain))
    assert all(a.spec.contains(b.spec) for (_, a), (_, b) in zip(using[1:], using))  # still nested


# -- L2: non-nested picks -----------------------------------------------------------------------
def test_flat_picks_need_not_nest(tmp_path):
    method = _searched(tmp_path / "flat", nested=False)
    net, ctx = method.net, method.ctx
    points, below = _candidates(method)
    for (b, p) in method._pick(points, below):  # each budget's most accurate candidate
        fits = [q for q in points if q.cost <= ctx.limit(b) + 1e-9]
        assert p.accuracy == max(q.accuracy for q in fits)
    # made-up scores where the best small sub-net is not inside the best larger one
    small, other = net.min_spec(), net.min_spec().replace(0, net.groups[0].channels)
    big = net.full_spec().replace(0, net.groups[0].floor)
    assert not big.contains(other)
    limits = [ctx.limit(b) for b in below]
    pts = [PathPoint(small, 0.0, 0.50, 0), PathPoint(other, 0.0, 0.60, 0), PathPoint(big, limits[-1], 0.90, 0)]
    flat = method._pick(pts, below)
    assert [p.spec for _, p in flat] == [other] * (len(below) - 1) + [big]
    method.options = replace(method.options, nested=True)
    nested = method._pick(pts, below)
    assert nested == pick_nested(pts, below, ctx.select_full, ctx.select_cost.unit,
                                 lambda a, b: a.spec.contains(b.spec), margin=ctx.margin)
    assert nested[0][1].spec == small and nested[-1][1].spec == big


# -- L7: each pick widened to fill its budget ---------------------------------------------------
def test_fill_budget_widens_by_macs_per_cost_until_nothing_wider_fits(net):
    cost = MockLatency()
    price = lambda s: cost.cost(net, s)
    start = net.min_spec()
    limit = 0.5 * (price(start) + price(net.full_spec()))
    grown = levers.fill_budget(net, start, price, lambda s: price(s) <= limit)
    assert grown.contains(start) and grown != start and price(grown) <= limit
    for g in net.groups:  # no single widening of the result fits
        for w in g.grid:
            if w > grown[g.index]:
                assert price(grown.replace(g.index, w)) > limit, (g.index, w)
    # a cap bounds every group; the same spec comes back when nothing wider fits
    cap = start.replace(0, net.groups[0].grid[-1])
    capped = levers.fill_budget(net, start, price, lambda s: price(s) <= limit, cap=cap)
    assert cap.contains(capped) and capped.contains(start)
    free = levers.fill_budget(net, start, price, lambda s: price(s) <= price(start))  # channels the blocks pad anyway
    assert free.contains(start) and free != start and price(free) == price(start)
    assert levers.fill_budget(net, start, price, lambda s: False) == start
    with pytest.raises(ValueError, match="does not contain"):
        levers.fill_budget(net, net.full_spec(), price, lambda s: True, cap=start)


def test_fill_budget_takes_free_channels_first_and_then_the_best_gain_per_cost(net):
    """Made-up prices: widening group 0 is free, group 1 costs 1 per step; group 1 adds 10x
    the gain. The free step comes first; then, with room for one paid step, the paid one."""
    g0, g1 = net.groups[0], net.groups[1]
    start = net.min_spec()
    price = lambda s: float(g1.grid.index(s[1]) - g1.grid.index(start[1]))
    gain = lambda s: float(s[0] + 10 * s[1])
    only = lambda s: all(s[i] == start[i] for i in range(2, len(s)))  # the other groups stay put
    grown = levers.fill_budget(net, start, price, lambda s: only(s) and price(s) <= 1.0, gain=gain)
    assert grown[0] == g0.grid[-1] and grown[1] == g1.grid[g1.grid.index(start[1]) + 1]


def test_fill_budget_in_the_method_fills_each_pick_and_keeps_the_chain_nested(tmp_path):
    method = _searched(tmp_path / "fill", fill_budget=True)
    ctx = method.ctx
    points, below = _candidates(method)
    plain = method._pick(points, below)
    filled = method._fill(plain)
    assert [b for b, _ in filled] == [b for b, _ in plain]
    for (b, f), (_, p) in zip(filled, plain):
        assert f.spec.contains(p.spec) and f.cost <= ctx.limit(b) + 1e-9 and f.cost >= p.cost - 1e-12
    assert all(a.spec.contains(b.spec) for (_, a), (_, b) in zip(filled[1:], filled))
    assert any(f.spec != p.spec for (_, f), (_, p) in zip(filled, plain))  # the mock's budgets leave room
    picks = method.select()  # the method's selection is the filled one
    assert [p.spec for _, p in picks][:len(filled)] == [p.spec for _, p in filled]


# -- L4: the block-aware grid -------------------------------------------------------------------
def test_block_multiples_join_the_grid_above_the_floor():
    assert with_block_multiples((12, 24, 36, 48, 60, 72, 84, 96), 24, 16) == (
        12, 24, 32, 36, 48, 60, 64, 72, 80, 84, 96)
    assert with_block_multiples((8, 16, 24), 8, 1) == (8, 16, 24)
    assert with_block_multiples((6, 12, 18, 24), 6, 16, unit=3) == (6, 12, 18, 24)  # 48 > 24: none
    assert with_block_multiples((4, 8, 12, 16, 20, 24), 4, 8, unit=4) == (4, 8, 12, 16, 20, 24)


class _Table:
    layout = Layout("nchwc", 16)


class BlockedLatency(MockLatency):
    """MockLatency with a latency table's NCHWc16 layout (what the block is read from)."""

    table = _Table()


def test_block_grid_builds_the_run_network_on_the_block_aware_grid(tmp_path):
    # channel_groups=2: resnet20's 64-channel groups take {32, 64}; with the block 16 also 48
    result = run_search(_config(tmp_path / "grid", block_grid=True), BlockedLatency())
    net = DynamicNet.load(tmp_path / "grid" / "weights.pt")
    wide = [g for g in net.groups if g.channels == 64]
    assert wide and all(g.grid == (32, 48, 64) and g.floor == 32 for g in wide)
    assert net.config()["grid_block"] == 16
    assert load_result(tmp_path / "grid")["config"]["options"] == {"block_grid": True}
    assert all(net.check_spec(s.spec) for s in result.subnets)
    plain = start(_config(tmp_path / "plain", block_grid=True), MockLatency(), Dist()).net  # no table: no block
    assert "grid_block" not in plain.config() and all(g.grid == (32, 64) for g in plain.groups if g.channels == 64)
