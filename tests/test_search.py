"""The search pipelines (autoslim, the paper's progressive search, US-Nets): ranking, search,
re-selection, training, resume, CLI."""

from __future__ import annotations

import json
import math
import socket
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch

from edgedyn.cost import FlopsCost
from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.profile.blocks import subnet_keys
from edgedyn.search import (PathPoint, Scorer, SearchConfig, Threshold, load_result, pareto, parse_budgets, pick,
                            progressive_search, run_search)
from edgedyn.search import train as T
from edgedyn.search.progressive import next_removals
from edgedyn.search.ranking import NoiseInjection, apply_order, l1_orders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from check_search_identity import StepLatency  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


class MockLatency(StepLatency):
    """A deterministic stand-in latency table (the identity goldens' :class:`StepLatency`: per
    fused block, a cost that steps at multiples of 8 channels and grows sub-linearly with the
    feature-map area, so it ranks removals differently from MACs), which checks the network."""

    def check(self, net: DynamicNet) -> None:
        subnet_keys(net, net.full_spec())


def small_config(out: Path, **kw) -> SearchConfig:
    base = dict(model="resnet20", method="progressive", data="digits", data_limit=200, input_size=8, channel_groups=2,
                budgets="0.4,0.7,1.0", threshold="drop:10", pretrain_epochs=1, rank_epochs=1, train_epochs=1,
                batches_per_epoch=3, batch_size=32, finetune_batches=2, finetune_check=2, calib_batches=2,
                search_calib_batches=1, lr=0.05, seed=3, out=str(out))
    base.update(kw)
    return SearchConfig(**base)


def strip(doc: dict) -> dict:
    """A result without the fields that name its own directory."""
    doc = json.loads(json.dumps(doc))
    for k in ("out", "resume", "compare"):
        doc["config"].pop(k)
    doc.pop("timings", None)  # wall seconds
    return doc


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    result = run_search(small_config(out), MockLatency())
    return out, result


# -- units -----------------------------------------------------------------------------
def test_threshold_parse():
    assert Threshold.parse("50%") == Threshold("abs", 0.5)
    assert Threshold.parse("0.4").target(0.9) == pytest.approx(0.4)
    assert Threshold.parse("drop:5").target(0.9) == pytest.approx(0.85)
    assert Threshold.parse("none").target(0.9) == -math.inf
    with pytest.raises(EdgedynError, match="not understood"):
        Threshold.parse("fifty")


def test_parse_budgets_fractions_and_ms():
    assert [b.value for b in parse_budgets("1.0,0.25,50%", "ms")] == [0.25, 0.5, 1.0]
    ms = parse_budgets("5ms,3ms", "ms")
    assert [(b.value, b.unit) for b in ms] == [(3.0, "ms"), (5.0, "ms")]
    assert ms[0].limit(100.0) == 3.0
    with pytest.raises(EdgedynError, match="cost model measures 'MMAC'"):
        parse_budgets("3ms", "MMAC")
    with pytest.raises(EdgedynError, match=r"in \(0, 1\]"):
        parse_budgets("2", "ms")


def test_pareto_keeps_only_undominated_points():
    pts = [PathPoint(SubnetSpec((i + 1,)), c, a) for i, (c, a) in
           enumerate([(1, 0.5), (2, 0.4), (2, 0.6), (3, 0.6), (4, 0.9), (5, 0.8), (0.5, 0.1)])]
    front = pareto(pts)
    assert [(p.cost, p.accuracy) for p in front] == [(0.5, 0.1), (1, 0.5), (2, 0.6), (4, 0.9)]
    for p in pts:  # every dropped point is beaten on both axes by a kept one
        if p not in front:
            assert any(q.cost <= p.cost and q.accuracy >= p.accuracy for q in front)


def test_pick_per_budget_and_unreachable_message():
    pts = [PathPoint(SubnetSpec((i + 1,)), c, a) for i, (c, a) in enumerate([(2, 0.5), (5, 0.7), (10, 0.9)])]
    picks = pick(pts, parse_budgets("0.5,1.0", "ms"), 10.0, "ms")
    assert [(b.value, p.cost) for b, p in picks] == [(0.5, 5), (1.0, 10)]
    with pytest.raises(EdgedynError) as err:
        pick(pts, parse_budgets("1ms", "ms"), 10.0, "ms")
    assert "smallest feasible cost is 2 ms" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EdgedynError) as err:  # reachable but for the margin: the message says so
        pick(pts, parse_budgets("0.2", "ms"), 10.0, "ms", margin=0.2)
    assert "(1.6 ms after the 20% margin)" in str(err.value) and "smaller --budget-margin" in str(err.value)
    with pytest.raises(EdgedynError) as err:  # unreachable with no margin either: no such hint
        pick(pts, parse_budgets("0.1", "ms"), 10.0, "ms", margin=0.2)
    assert "after the 20% margin" in str(err.value) and "--budget-margin" not in str(err.value)


def test_noise_injection_only_in_training_and_removable():
    from helpers import settle_bn

    net = settle_bn(DynamicNet.from_name("resnet20", num_classes=10, input_size=8), 8)
    x = torch.randn(4, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        ref = net(x)
    with NoiseInjection(net) as noise:
        with torch.no_grad():
            noise.alphas[0].fill_(0.5)
            assert torch.equal(net(x), ref)  # eval: no noise
            net.train()
            torch.manual_seed(0)
            a = net(x)
            torch.manual_seed(1)
            b = net(x)
            net.eval()
        assert not torch.allclose(a, b)  # fresh noise each forward in training
        net.train()
        loss = net(x).square().mean()
        loss.backward()
        net.eval()
        assert noise.alphas[0].grad is not None and noise.alphas[0].grad.abs().sum() > 0
        assert len(noise.orders()) == len(net.groups)
    net.zero_grad(set_to_none=True)
    with torch.no_grad():
        net.train()
        c = net(x)
        net.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        net.train()
        d = net(x)
        net.eval()
    assert torch.equal(c, d)  # hooks gone: training forward is deterministic again
    net.eval()


def test_l1_order_puts_largest_filters_first():
    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=2)
    g = net.groups[1]
    conv = dict(net.model.named_modules())[next(m.layer for m in g.members if m.side == "out")]
    with torch.no_grad():
        conv.weight[3].mul_(100.0)
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    with torch.no_grad():
        before = net(x)
    orders = l1_orders(net)
    assert int(orders[1][0]) == 3
    apply_order(net, orders)
    with torch.no_grad():
        assert torch.allclose(net(x), before, atol=1e-4)  # permutation keeps the function
    assert conv.weight[0].abs().sum() > conv.weight[1:].abs().flatten(1).sum(1).max()


def _search_steps(cost_model, net, holdout):
    def evaluate(spec):
        return T.accuracy(net, spec, holdout)

    start = PathPoint(net.full_spec(), cost_model.cost(net, net.full_spec()), evaluate(net.full_spec()))
    return list(progressive_search(net, cost_model, evaluate, start))


def test_cost_model_steers_the_search():
    from helpers import settle_bn

    net = settle_bn(DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=4), 8)
    gen = torch.Generator().manual_seed(0)
    holdout = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))]
    lat = _search_steps(MockLatency(), net, holdout)
    flops = _search_steps(FlopsCost(), net, holdout)
    assert [s.chosen.group for s in lat] != [s.chosen.group for s in flops]
    for steps, cm in ((lat, MockLatency()), (flops, FlopsCost())):
        prev = net.full_spec()
        for s in steps:
            assert prev.contains(s.point.spec) and prev != s.point.spec  # one removal, nested
            assert s.point.cost == pytest.approx(cm.cost(net, s.point.spec))
            best = min(s.candidates, key=lambda c: c.rank_key())
            assert best == s.chosen
            prev = s.point.spec
        assert prev == net.min_spec()  # the search runs down to every floor
        assert not next_removals(net, prev)


# -- whole runs --------------------------------------------------------------------------
def test_run_outputs_nested_and_within_budget(base_run):
    out, result = base_run
    doc = load_result(out)
    assert doc["cost"] == {"name": "latency", "unit": "ms", "full": result.full_cost}
    specs = [SubnetSpec.of(s["widths"]) for s in doc["subnets"]]
    for small, big in zip(specs, specs[1:]):
        assert big.contains(small)
    cm = MockLatency()
    for s, spec in zip(doc["subnets"], specs):
        limit = s["budget"]["value"] * result.full_cost
        assert s["cost"] == pytest.approx(cm.cost(result.net, spec)) and s["cost"] <= limit + 1e-9
        assert s["macs"] == result.net.macs(spec) and 0.0 <= s["test_accuracy"] <= 1.0
    path = [SubnetSpec.of(p["widths"]) for p in doc["path"]]
    assert path[0] == result.net.full_spec()
    assert all(a.contains(b) and a != b for a, b in zip(path, path[1:]))
    # the search stops at the first sub-net that fits the smallest budget (less the margin)
    smallest = min(s["budget"]["value"] for s in doc["subnets"]) * result.full_cost * (1 - 0.02)
    costs = [cm.cost(result.net, p) for p in path]
    assert costs[-1] <= smallest and all(c > smallest for c in costs[:-1])
    for name in ("weights.pt", "search.log", "accuracy_latency.png", "checkpoint.pt"):
        assert (out / name).is_file(), name
    blob = torch.load(out / "weights.pt", weights_only=True)
    assert set(SubnetSpec.from_json(k) for k in blob["bn_stats"]) == set(specs)
    reloaded = DynamicNet.load(out / "weights.pt")
    assert set(reloaded.bn_stats) == set(specs)


def test_resume_after_interruption_matches_uninterrupted(base_run, tmp_path):
    out, _ = base_run
    interrupt_and_resume(small_config(tmp_path / "r"), (("rank", 1), ("search", 4), ("train", 1)))
    assert strip(load_result(tmp_path / "r")) == strip(load_result(out))


def interrupt_and_resume(cfg: SearchConfig, wheres) -> None:
    """Stop the run at each (phase, index) in turn, resuming from the second on, then finish it."""

    class Stop(Exception):
        pass

    def stop_at(where):
        def hook(phase, index):
            if (phase, index) == where:
                raise Stop

        return hook

    for k, where in enumerate(wheres):
        with pytest.raises(Stop):
            run_search(replace(cfg, resume=k > 0), MockLatency(), hook=stop_at(where))
    run_search(replace(cfg, resume=True), MockLatency())


def test_same_seed_same_result(base_run, tmp_path):
    assert_same_result(base_run[0], small_config(tmp_path / "again"))


def assert_same_result(out: Path, cfg: SearchConfig) -> None:
    """Running ``cfg`` again gives the result in ``out`` (the fields naming its folder aside)."""
    run_search(cfg, MockLatency())
    assert strip(load_result(cfg.out)) == strip(load_result(out))


def test_usnet_baseline_picks_largest_uniform_width_that_fits(base_run, tmp_path):
    out, base = base_run
    cfg = small_config(tmp_path / "us", method="usnet", weights=str(out / "weights.pt"), pretrain_epochs=0)
    result = run_search(cfg, MockLatency())
    net = result.net
    uniform = {net.uniform_spec(r) for r in [i / 64 for i in range(16, 65)]}
    for s in result.subnets:
        assert s.spec in uniform and s.cost <= s.budget.limit(result.full_cost) + 1e-9
        bigger = [u for u in uniform if u.contains(s.spec) and u != s.spec]
        assert all(MockLatency().cost(net, u) > s.budget.limit(result.full_cost) for u in bigger)
    assert result.subnets[-1].spec == net.full_spec()
    assert load_result(tmp_path / "us")["config"]["method"] == "usnet"


def test_unreachable_budget_names_smallest_feasible_cost(tmp_path):
    with pytest.raises(EdgedynError) as err:
        run_search(small_config(tmp_path, budgets="0.01,0.5"), MockLatency())
    msg = str(err.value)
    assert "smallest feasible cost is" in msg and "ms" in msg and "\n" not in msg
    assert not (tmp_path / "checkpoint.pt").exists()  # failed before any training


def test_missing_dataset_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(EdgedynError) as err:
        run_search(small_config(tmp_path / "o", data=f"cifar10:{missing}"), FlopsCost())
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_weights_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(ArtifactError) as err:
        run_search(small_config(tmp_path / "o", weights=str(bad)), FlopsCost())
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_cli_errors_are_one_line(tmp_path):
    from click.testing import CliRunner

    from edgedyn.cli import cli
    from edgedyn.search.cli_cmd import search

    if "search" not in cli.commands:
        cli.add_command(search)
    runner = CliRunner()
    res = runner.invoke(cli, ["search", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--budget-table" in res.output
    res = runner.invoke(cli, ["search", "--cost", "flops", "--data", f"imagefolder:{tmp_path / 'none'}",
                              "--out", str(tmp_path / "o")])
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and str(tmp_path / "none") in errors[0]
    assert "Traceback" not in res.output


# -- distributed ---------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, cfg: SearchConfig, queue) -> None:
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        result = run_search(cfg, MockLatency())
        queue.put((rank, [list(s.spec.widths) for s in result.subnets], [p.to_dict() for p in result.path]))
    finally:
        tdist.destroy_process_group()


def _two_ranks(cfg: SearchConfig) -> list[tuple[int, list, list]]:
    """``cfg`` searched by two gloo ranks in spawned processes: each rank's (rank, widths, path)."""
    queue = torch.multiprocessing.get_context("spawn").Queue()
    procs = torch.multiprocessing.spawn(_dist_worker, args=(2, _free_port(), cfg, queue), nprocs=2, join=False)
    procs.join(timeout=240)
    return sorted(queue.get(timeout=10) for _ in range(2))


def test_distributed_two_ranks_choose_the_same_subnets(base_run, tmp_path):
    out, _ = base_run
    cfg = small_config(tmp_path / "one", weights=str(out / "weights.pt"), ranking="l1", threshold="none",
                       train_epochs=1)
    single = run_search(cfg, MockLatency())
    got = _two_ranks(replace(cfg, out=str(tmp_path / "two")))
    assert [g[0] for g in got] == [0, 1]
    for _, widths, path in got:
        assert widths == [list(s.spec.widths) for s in single.subnets]
        assert path == [p.to_dict() for p in single.path]
    doc = load_result(tmp_path / "two")  # rank 0 wrote the same result format
    assert [s["widths"] for s in doc["subnets"]] == [list(s.spec.widths) for s in single.subnets]


# -- autoslim: one-shot training, cost-steered greedy slimming, the picks trained ------------
def slim_config(out: Path, **kw) -> SearchConfig:
    base = dict(method="autoslim", channel_groups=4, train_epochs=2, final_epochs=1, slim_step=0.1, before_train=True,
                score_samples=8, threshold="none", direction="grow")  # 8 of a 20-image holdout
    base.update(kw)
    return small_config(out, **base)


@pytest.fixture(scope="module")
def slim_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("slim")
    result = run_search(slim_config(out), MockLatency())
    return out, result


@pytest.fixture(scope="module")
def slimmed_run(slim_run, tmp_path_factory):
    """``direction="slim"``: legs slimmed from the full model (on slim_run's weights)."""
    out = tmp_path_factory.mktemp("slimmed")
    cfg = slim_config(out, direction="slim", weights=str(slim_run[0] / "weights.pt"), pretrain_epochs=0,
                      budgets="0.4,0.7,0.9,1.0")
    return out, run_search(cfg, MockLatency())


def test_autoslim_grown_picks_are_nested_fit_their_budgets_and_steps_add_the_step(slim_run):
    from edgedyn.search.slim import step_additions

    out, result = slim_run
    doc = load_result(out)
    assert doc["config"]["method"] == "autoslim" and doc["config"]["direction"] == "grow"
    cm, net = MockLatency(), result.net
    picks = [SubnetSpec.of(s["widths"]) for s in doc["subnets"]]
    assert all(big.contains(small) for small, big in zip(picks, picks[1:]))
    for s, spec in zip(doc["subnets"], picks):
        limit = s["budget"]["value"] * result.full_cost
        limit = limit if s["budget"]["value"] >= 1.0 else limit * (1 - 0.02)
        assert s["cost"] == pytest.approx(cm.cost(net, spec)) and s["cost"] <= limit + 1e-9
    path = [PathPoint.from_dict(p) for p in doc["path"]]
    step = 0.1 * result.full_cost
    legs = doc["legs"]
    assert [g["budget"] for g in legs] == ["0.4", "0.7"]  # one leg per budget below the full model
    assert sorted(i for g in legs for i in g["points"]) == list(range(1, len(path)))
    previous = net.min_spec()
    for leg in legs:
        start = SubnetSpec.of(leg["floor"])
        assert start.contains(previous)  # each leg grows from something above the previous pick
        limit = float(leg["budget"]) * result.full_cost * (1 - 0.02)
        fits = lambda spec: cm.cost(net, spec) <= limit + 1e-9  # noqa: E731
        chain = [start] + [path[i].spec for i in leg["points"]]
        for a, b in zip(chain, chain[1:]):
            assert b.contains(a) and a != b and fits(b)
            added = cm.cost(net, b) - cm.cost(net, a)
            options = step_additions(net, a, cm, cm.cost(net, a), step, fits)
            assert b in {o for _, o, _ in options}
            if any(c - cm.cost(net, a) >= step - 1e-9 for _, _, c in options):
                assert added >= step - 1e-9  # short additions compete only when none adds the step
        assert not step_additions(net, chain[-1], cm, cm.cost(net, chain[-1]), step, fits)  # grown to the budget
        previous = next(p for p, sub in zip(picks, doc["subnets"]) if sub["budget"]["text"] == leg["budget"])
        for st in (doc["steps"][i - 1] for i in leg["points"]):
            assert st["point"]["loss"] == min(c["loss"] for c in st["candidates"])  # the least held-out loss wins


def test_autoslim_slimmed_resume_mid_leg_matches_uninterrupted(slim_run, slimmed_run, tmp_path):
    out, result = slimmed_run
    legs = load_result(out)["legs"]
    assert len(legs) >= 2
    mid = legs[1]["points"][len(legs[1]["points"]) // 2]  # a step inside the second leg
    cfg = slim_config(tmp_path / "r", direction="slim", weights=str(slim_run[0] / "weights.pt"), pretrain_epochs=0,
                      budgets="0.4,0.7,0.9,1.0")
    interrupt_and_resume(cfg, (("search", 1), ("search", mid)))
    assert strip(load_result(tmp_path / "r")) == strip(load_result(out))


def test_autoslim_slimmed_picks_are_nested_fit_their_budgets_and_steps_save_the_step(slimmed_run):
    from edgedyn.search.slim import step_removals

    out, result = slimmed_run
    doc = load_result(out)
    assert doc["config"]["method"] == "autoslim"
    cm, net = MockLatency(), result.net
    specs = [SubnetSpec.of(s["widths"]) for s in doc["subnets"]]
    for small, big in zip(specs, specs[1:]):
        assert big.contains(small)
    for s, spec in zip(doc["subnets"], specs):
        limit = s["budget"]["value"] * result.full_cost
        limit = limit if s["budget"]["value"] >= 1.0 else limit * (1 - 0.02)
        assert s["cost"] == pytest.approx(cm.cost(net, spec)) and s["cost"] <= limit + 1e-9
        before = s["before_train"]  # the one-shot weights' accuracy, kept for the ablation
        assert 0.0 <= before["test_accuracy"] <= 1.0 and 0.0 <= before["holdout_accuracy"] <= 1.0
    path = [PathPoint.from_dict(p) for p in doc["path"]]
    step = 0.1 * result.full_cost
    legs = doc["legs"]
    assert legs and legs[0]["floor"] == list(net.min_spec().widths) and legs[0]["points"][0] == 0
    assert sorted(i for g in legs for i in g["points"][1:]) == list(range(1, len(path)))  # each point in one leg
    for leg in legs:
        floor = SubnetSpec.of(leg["floor"])
        limit = next(s["budget"]["value"] for s in doc["subnets"] if s["budget"]["text"] == leg["budget"])
        limit *= result.full_cost * (1 - 0.02)
        pts = [path[i] for i in leg["points"]]
        assert pts[-1].cost <= limit and all(p.cost > limit for p in pts[:-1])  # slimmed down to its budget
        for ia, ib in zip(leg["points"], leg["points"][1:]):
            a, b, st = path[ia], path[ib], doc["steps"][ib - 1]
            assert a.spec.contains(b.spec) and a.spec != b.spec and b.spec.contains(floor)
            saved = cm.cost(net, a.spec) - cm.cost(net, b.spec)
            # each step takes one group down until it saves the fixed step; a group that cannot
            # save it at any width offers its cheapest width instead
            options = step_removals(net, a.spec, cm, cm.cost(net, a.spec), step, floor)
            assert b.spec in {o for _, o, _ in options}
            g = next(i for i in range(len(a.spec)) if a.spec[i] != b.spec[i])
            lower = [cm.cost(net, a.spec.replace(g, w)) for w in net.groups[g].widths_from(floor[g]) if w < a.spec[g]]
            assert saved >= step - 1e-9 or cm.cost(net, b.spec) == pytest.approx(min(lower))
            if any(cm.cost(net, a.spec) - c >= step - 1e-9 for _, _, c in options):
                assert saved >= step - 1e-9  # short candidates compete only when no group saves the step
            assert st["point"]["loss"] == min(c["loss"] for c in st["candidates"])  # the least held-out loss wins


def test_autoslim_same_seed_same_result(slim_run, tmp_path):
    assert_same_result(slim_run[0], slim_config(tmp_path / "again"))


def test_autoslim_resume_after_interruption_matches_uninterrupted(slim_run, tmp_path):
    out, _ = slim_run
    interrupt_and_resume(slim_config(tmp_path / "r"), (("supernet", 1), ("search", 2), ("train", 1)))
    assert strip(load_result(tmp_path / "r")) == strip(load_result(out))


def test_autoslim_steered_by_flops_priced_by_latency(slim_run, tmp_path):
    """--cost flops with a table: the path is steered by MACs, the budgets and picks are latencies."""
    out, _ = slim_run
    cfg = slim_config(tmp_path / "f", weights=str(out / "weights.pt"), pretrain_epochs=0,
                      supernet_students="random", uniform_candidates=False)
    result = run_search(cfg, FlopsCost(), select_cost=MockLatency())
    doc = load_result(tmp_path / "f")
    assert doc["cost"]["unit"] == "ms" and doc["config"]["select_cost"] == "latency"
    for s in result.subnets:
        assert s.cost == pytest.approx(MockLatency().cost(result.net, s.spec))
    # each step added about 10 % of the full model's MACs, not of its latency
    full_macs = result.net.macs(result.net.full_spec()) / 1e6
    path = [PathPoint.from_dict(p) for p in doc["path"]]
    assert all(p.cost > 0 for p in path)
    from edgedyn.search.slim import step_additions

    fc, step = FlopsCost(), 0.1 * full_macs
    for leg in doc["legs"]:
        lim = float(leg["budget"]) * MockLatency().cost(result.net, result.net.full_spec()) * (1 - 0.02)
        fits = lambda spec: MockLatency().cost(result.net, spec) <= lim + 1e-9  # noqa: E731
        chain = [SubnetSpec.of(leg["floor"])] + [path[i].spec for i in leg["points"]]
        for a, b in zip(chain, chain[1:]):
            added = fc.cost(result.net, b) - fc.cost(result.net, a)
            # a step adds the fixed step of MACs unless no group can within the latency budget
            options = step_additions(result.net, a, fc, fc.cost(result.net, a), step, fits)
            assert added >= step - 1e-6 or (added > 0 and all(c - fc.cost(result.net, a) < step - 1e-6
                                                              for _, _, c in options))
    assert [d["point"]["cost"] for d in doc["steps"]] == pytest.approx(
        [FlopsCost().cost(result.net, SubnetSpec.of(d["point"]["widths"])) for d in doc["steps"]])


def test_paper_criterion_keeps_the_least_accuracy_drop():
    from helpers import settle_bn

    net = settle_bn(DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=4), 8)
    gen = torch.Generator().manual_seed(0)
    holdout = [(torch.randn(16, 3, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen))]
    start = PathPoint(net.full_spec(), MockLatency().cost(net, net.full_spec()), T.accuracy(net, net.full_spec(), holdout))
    steps = list(progressive_search(net, MockLatency(), lambda s: T.accuracy(net, s, holdout), start,
                                    criterion="drop", max_steps=5))
    for s in steps:
        saving = [c for c in s.candidates if c.saved > 1e-9]
        assert s.chosen.lost == min(c.lost for c in saving)
    with pytest.raises(EdgedynError, match="criterion"):
        next(progressive_search(net, MockLatency(), lambda s: 0.0, start, criterion="nope"))


def test_max_steps_too_few_for_the_smallest_budget_fails_at_start(tmp_path):
    with pytest.raises(EdgedynError) as err:
        run_search(slim_config(tmp_path / "m", budgets="0.3,1.0", max_steps=1), MockLatency())
    msg = str(err.value)
    assert "--max-steps 1" in msg and "\n" not in msg
    assert not (tmp_path / "m").exists()  # nothing written


def test_failed_rerun_leaves_the_finished_run_untouched(slim_run, tmp_path):
    import shutil

    out, _ = slim_run
    run = tmp_path / "done"
    shutil.copytree(out, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torch" * 10)
    with pytest.raises(ArtifactError):  # --overwrite: the inputs are still checked before anything goes
        run_search(slim_config(run, weights=str(bad), overwrite=True), MockLatency())
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_out_below_a_file_is_one_line(tmp_path):
    (tmp_path / "a").write_text("x")
    with pytest.raises(EdgedynError) as err:
        run_search(slim_config(tmp_path / "a" / "b"), MockLatency())
    assert "is a file" in str(err.value) or "has a file" in str(err.value)
    assert "\n" not in str(err.value)


def test_autoslim_distributed_two_ranks_choose_the_same_subnets(slim_run, tmp_path):
    # Data-parallel training is not bit-identical to one process (BatchNorm sees each rank's
    # shard), so the search runs on fixed weights (no one-shot epochs) and the two must agree
    # on every candidate's score, the path and the picks.
    out, _ = slim_run
    cfg = slim_config(tmp_path / "one", weights=str(out / "weights.pt"), pretrain_epochs=0, final_epochs=2)
    single = run_search(cfg, MockLatency())
    got = _two_ranks(replace(cfg, out=str(tmp_path / "two")))
    for _, widths, path in got:
        assert widths == [list(s.spec.widths) for s in single.subnets]
        assert path == [p.to_dict() for p in single.path]


def test_pick_nested_takes_the_best_nested_chain():
    from dataclasses import dataclass

    from edgedyn.search.reselect import pick_nested

    @dataclass(frozen=True)
    class P:
        cost: float
        accuracy: float
        members: frozenset

    a, b, c, d = (P(1, 0.5, frozenset({1})), P(2, 0.7, frozenset({1, 2})), P(2, 0.8, frozenset({3})),
                  P(3, 0.9, frozenset({1, 2, 3})))
    nested = lambda big, small: small.members <= big.members  # noqa: E731
    picks = pick_nested([a, b, c, d], parse_budgets("1ms,2ms,3ms", "ms"), 3, "ms", nested)
    assert [p for _, p in picks] == [a, b, d]  # c is more accurate but does not contain a
    picks = pick_nested([b, c, d], parse_budgets("2ms,3ms", "ms"), 3, "ms", nested)
    assert [p for _, p in picks] == [c, d]
    with pytest.raises(EdgedynError, match="smallest feasible cost"):
        pick_nested([b, d], parse_budgets("1ms", "ms"), 3, "ms", nested)


def test_autoslim_weighs_the_uniform_widths_and_keeps_picks_nested(slim_run):
    out, result = slim_run
    doc = load_result(out)
    specs = [SubnetSpec.of(s["widths"]) for s in doc["subnets"]]
    assert all(big.contains(small) for small, big in zip(specs, specs[1:]))
    from edgedyn.search.reselect import uniform_points

    uniform = {p.spec for p in uniform_points(result.net, MockLatency())}
    path = {SubnetSpec.of(p["widths"]) for p in doc["path"]}
    assert all(s in path or s in uniform for s in specs)


def test_slim_search_never_goes_below_its_floor():
    from edgedyn.search.progressive import PathPoint as PP
    from edgedyn.search.slim import slim_search

    torch.manual_seed(0)
    net = DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=4, min_groups=1)
    cm = MockLatency()
    floor = net.uniform_spec(0.5)
    full = net.full_spec()
    score = lambda spec: (float(sum(spec.widths)) / 100.0, 0.5)  # noqa: E731 - prefers the narrowest removals
    start = PP(full, cm.cost(net, full), 0.5, 0, loss=0.0)
    points = [s.point for s in slim_search(net, cm, score, start, step_cost=0.05 * start.cost,
                                           stop=lambda p: False, floor=floor)]
    assert points and all(p.spec.contains(floor) for p in points)
    assert points[-1].spec == floor  # it slims until nothing above the floor is left


def test_autoslim_legs_nest_over_the_previous_pick(slim_run, tmp_path):
    """When the pick for a small budget is above the floors (here: the uniform widths score
    best), the next budget gets a leg of its own that never slims below that pick."""
    from edgedyn.search.reselect import uniform_points

    out, _ = slim_run

    class UniformFirst(Scorer):
        def measure_record(self, spec):
            uniform = {p.spec for p in uniform_points(self.net, MockLatency())}
            loss, acc = super().measure_record(spec)
            # the uniform widths score best, the wider the better
            wide = 0.5 * sum(spec.widths) / sum(self.net.full_spec().widths)
            return loss, acc / 2.0 + (wide if spec in uniform else 0.0)

    cfg = slim_config(tmp_path / "legs", weights=str(out / "weights.pt"), pretrain_epochs=0, budgets="0.4,0.7,0.9,1.0",
                      direction="slim")
    result = run_search(cfg, MockLatency(), scorer=UniformFirst)
    doc = load_result(tmp_path / "legs")
    legs, path = doc["legs"], [PathPoint.from_dict(p) for p in doc["path"]]
    picks = [SubnetSpec.of(s["widths"]) for s in doc["subnets"]]
    assert all(big.contains(small) for small, big in zip(picks, picks[1:]))
    assert len(legs) >= 2 and len({tuple(g["floor"]) for g in legs}) == len(legs)  # one leg per distinct floor
    assert legs[1]["floor"] != list(result.net.min_spec().widths)
    for leg in legs:
        floor = SubnetSpec.of(leg["floor"])
        assert all(path[i].spec.contains(floor) for i in leg["points"])
        assert any(p.contains(floor) and p != floor for p in picks) or floor in picks


def test_record_reuses_the_scored_subset_and_equals_the_whole_holdout(slim_run, tmp_path):
    """``record`` evaluates only the holdout less the scoring subset for a sub-net the last
    step scored; its (loss, accuracy) equal a whole-holdout evaluation either way."""
    from edgedyn.search.context import RunContext
    from edgedyn.search.dist import Dist

    out, _ = slim_run
    cfg = slim_config(tmp_path / "rec", weights=str(out / "weights.pt"), pretrain_epochs=0, score_samples=8)
    ctx = RunContext(cfg, MockLatency(), Dist(), None, scorer=partial(Scorer, memo=False))
    splits, scorer, net = ctx.splits, ctx.scorer, ctx.net
    assert splits.score_rest, "the scoring subset must leave a rest of the holdout here"
    n_sub = sum(int(y.numel()) for _, y in splits.score_set)
    n_rest = sum(int(y.numel()) for _, y in splits.score_rest)
    assert n_sub == 8 and n_sub + n_rest == sum(int(y.numel()) for _, y in splits.holdout)
    full, half = net.full_spec(), net.uniform_spec(0.5)
    for spec in (full, half):
        whole = T.calibrated_loss_and_accuracy(net, spec, splits.holdout, splits.calib)
        scorer.score(spec)  # scored first: the subset's sums are reused
        assert scorer.record(spec) == pytest.approx(whole, rel=1e-5)
        assert scorer.record(spec) == pytest.approx(whole, rel=1e-5)  # not scored: evaluated whole
        assert spec not in net.bn_stats  # temporary statistics are not left behind


def test_autoslim_full_model_serves_the_budgets_it_fits(slim_run, tmp_path):
    """Even when the holdout rates a smaller sub-net above the full model, a budget the full
    model fits gets the full model (and the picks below still nest inside it)."""
    out, _ = slim_run

    class SmallerLooksBetter(Scorer):
        def measure_record(self, spec):
            loss, acc = super().measure_record(spec)
            return loss, acc if spec == self.net.full_spec() else acc + 1.0  # every smaller sub-net looks better

    cfg = slim_config(tmp_path / "full", weights=str(out / "weights.pt"), pretrain_epochs=0, budgets="0.4,0.7,1.0",
                      direction="slim", final_epochs=0, train_epochs=0)
    result = run_search(cfg, MockLatency(), scorer=SmallerLooksBetter)
    picks = [s.spec for s in result.subnets]
    assert [s.budget.text for s in result.subnets] == ["0.4", "0.7", "1.0"]
    assert picks[-1] == result.net.full_spec()
    assert picks[1] != result.net.full_spec()  # below the full model the holdout still decides
    assert all(big.contains(small) for small, big in zip(picks, picks[1:]))


#: US-Nets' summed sandwich loss (autoslim's default averages since round 8; identity with US-Nets needs the sum)
SUMMED = {"sandwich_mean": False}


def test_autoslim_one_shot_training_is_usnets_training(slim_run, tmp_path):
    """autoslim's one-shot phase draws US-Nets' batches and widths: without final epochs it
    trains the very network US-Nets trains (what the benchmark's reuse of US-Nets' weights
    relies on), and with a final epoch its first epoch is US-Nets' first epoch."""
    out, _ = slim_run
    start = dict(weights=str(out / "weights.pt"), pretrain_epochs=0, budgets="0.4,0.7,1.0", direction="slim")
    snaps: dict[str, dict[str, torch.Tensor]] = {}

    def snap(name: str, phase: str, index: int):
        def hook(p: str, i: int) -> None:
            if (p, i) == (phase, index):
                snaps[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["state_dict"]
        return hook

    def same(a: str, b: str) -> bool:
        return snaps[a].keys() == snaps[b].keys() and all(torch.equal(snaps[a][k], snaps[b][k]) for k in snaps[a])

    run_search(slim_config(tmp_path / "us", method="usnet", **start), MockLatency(), hook=snap("us", "train", 2))
    run_search(slim_config(tmp_path / "us1", method="usnet", **start), MockLatency(), hook=snap("us1", "train", 1))
    run_search(slim_config(tmp_path / "as", final_epochs=0, options=SUMMED, **start), MockLatency(), hook=snap("as", "supernet", 2))
    run_search(slim_config(tmp_path / "af", final_epochs=1, options=SUMMED, **start), MockLatency(), hook=snap("af", "supernet", 1))
    run_search(slim_config(tmp_path / "af2", final_epochs=1, options=SUMMED, **start), MockLatency(), hook=snap("af2", "train", 1))
    assert same("us", "as")  # no final epochs: US-Nets' network, bit for bit
    assert same("us1", "af")  # the first of two epochs: US-Nets' first epoch
    assert not same("us", "af2")  # the last epoch trains the picks instead


def test_autoslim_scores_each_subnet_once_and_the_memo_changes_nothing(slim_run, tmp_path):
    """The legs revisit sub-nets; each is scored once on the one-shot weights, and the result
    equals a search that scores every visit again."""
    out, _ = slim_run
    cfg = dict(weights=str(out / "weights.pt"), pretrain_epochs=0, budgets="0.4,0.7,0.9,1.0", direction="slim",
               final_epochs=0, train_epochs=0)
    calls: list[SubnetSpec] = []

    class Counting(Scorer):
        in_record = False

        def measure_score(self, spec):
            if not self.in_record:  # a record of a sub-net scored in an earlier step scores it again for
                calls.append(spec)  # its BN statistics (the scorer keeps the last step's only): not a revisit
            return super().measure_score(spec)

        def measure_record(self, spec):
            self.in_record = True
            try:
                return super().measure_record(spec)
            finally:
                self.in_record = False

    memo = run_search(slim_config(tmp_path / "memo", **cfg), MockLatency(), scorer=Counting)
    assert len(calls) == len(set(calls))  # no sub-net scored twice
    # each phase's seconds are recorded; no training ran (train_epochs=0)
    assert memo.timings["search_cpu_s"] > 0 and memo.timings["final_s"] > 0
    assert not any(k.startswith(("supernet", "train")) for k in memo.timings)
    assert load_result(tmp_path / "memo")["timings"] == memo.timings
    calls.clear()
    again = run_search(slim_config(tmp_path / "again", **cfg), MockLatency(), scorer=partial(Counting, memo=False))
    assert len(calls) > len(set(calls))  # this search does revisit sub-nets
    assert strip(load_result(tmp_path / "memo")) == strip(load_result(tmp_path / "again"))
    assert [s.spec for s in memo.subnets] == [s.spec for s in again.subnets]
