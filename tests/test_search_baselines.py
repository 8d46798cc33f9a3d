"""Issue 19's two baselines: ``usnet-aligned`` (US-Nets' widths rounded up to the table's
channel block, on US-Nets' own network) and ``torch-pruning`` (the pre-trained model pruned
by Torch-Pruning to each budget, each pruned model fine-tuned), on tiny synthetic runs."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from edgedyn.blocks.layout import PLAIN, Layout
from edgedyn.cost import FlopsCost
from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.errors import EdgedynError
from edgedyn.search import SearchConfig, load_result, run_search
from edgedyn.search import train as T
from edgedyn.search.methods.pruning import allowed_widths, floor_spec, permuted, prune, split_batches
from edgedyn.search.methods.usnet_aligned import round_up, table_block
from edgedyn.search.registry import variants
from test_search import MockLatency, interrupt_and_resume, small_config, strip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def net() -> DynamicNet:
    torch.manual_seed(0)
    return DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=8, min_groups=2)


def _stage(spec: SubnetSpec) -> tuple[int, int, int]:
    """resnet20's three residual widths (groups 0, 4 and 8 hold the stages' outputs)."""
    return spec[0], spec[4], spec[8]


def _sha(path) -> str:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    return hashlib.sha256(b"".join(v.contiguous().numpy().tobytes() for _, v in sorted(blob["state_dict"].items()))
                          ).hexdigest()


# -- usnet-aligned ------------------------------------------------------------------------
def test_round_up_rounds_every_group_up_to_the_block_on_its_grid(net):
    u75 = net.uniform_spec(0.75)
    assert _stage(u75) == (12, 24, 48)
    assert _stage(round_up(net, u75, 16)) == (16, 32, 48)  # the example
    assert _stage(round_up(net, net.uniform_spec(0.25), 16)) == (16, 16, 16)
    assert _stage(round_up(net, net.uniform_spec(0.875), 16)) == (16, 32, 64)  # capped at the full width
    assert round_up(net, u75, 1) == u75  # a plain layout rounds nothing
    # no multiple of the block on a group's grid: its full width; every width stays on the grid
    got = round_up(net, net.uniform_spec(0.25), 24)
    assert _stage(got) == (16, 24, 24) and net.check_spec(got) == got
    coarse = DynamicNet.from_name("resnet20", num_classes=10, input_size=8, channel_groups=2, min_groups=1)
    assert _stage(round_up(coarse, coarse.uniform_spec(0.25), 8)) == (8, 16, 32)  # grid {8,16} / {16,32} / {32,64}


def test_the_block_is_read_from_the_tables_layout():
    class Table:
        def __init__(self, layout):
            self.layout = layout

    class Cost:
        def __init__(self, layout):
            self.table = Table(layout)

    assert table_block(Cost(Layout("nchwc", 16))) == 16
    assert table_block(Cost(PLAIN)) == 1
    assert table_block(FlopsCost(), Cost(Layout("nchwc", 8))) == 8  # the first cost model with a table
    assert table_block(FlopsCost(), MockLatency()) == 1


def test_aligned_with_block_1_is_usnet_exactly_and_trains_usnets_network(tmp_path):
    us = run_search(small_config(tmp_path / "us", method="usnet"), MockLatency())
    al = run_search(small_config(tmp_path / "al", method="usnet-aligned", options={"block": 1}), MockLatency())
    assert [s.to_dict() for s in al.subnets] == [s.to_dict() for s in us.subnets]
    assert _sha(tmp_path / "al" / "weights.pt") == _sha(tmp_path / "us" / "weights.pt")  # US-Nets' training
    assert "usnet-aligned" in variants() and variants()["usnet-aligned"].overrides["method"] == "usnet-aligned"


def test_aligned_picks_the_widest_aligned_uniform_width_that_fits(tmp_path):
    cfg = small_config(tmp_path / "al8", method="usnet-aligned", options={"block": 8}, budgets="0.5,0.8,1.0")
    result = run_search(cfg, MockLatency())
    net, cost = result.net, MockLatency()
    aligned = {round_up(net, net.uniform_spec(r), 8) for r in [i / 64 for i in range(16, 65)]}
    plain = {net.uniform_spec(r) for r in [i / 64 for i in range(16, 65)]}
    for s in result.subnets:
        limit = s.budget.limit(result.full_cost, cfg.budget_margin)
        assert s.cost <= limit + 1e-9
        fitting = [a for a in aligned if cost.cost(net, a) <= limit + 1e-9]
        if fitting:  # the costliest aligned width that fits
            assert s.spec in aligned and s.cost == max(cost.cost(net, a) for a in fitting)
        else:  # none fits: US-Nets' own widest
            assert s.spec in plain
    assert result.subnets[-1].spec == net.full_spec()
    with pytest.raises(EdgedynError, match="block must be an integer >= 1"):
        SearchConfig(method="usnet-aligned", options={"block": 0}).validate()


# -- torch-pruning: the pruning ---------------------------------------------------------------
def test_pruned_model_is_the_permuted_networks_prefix_subnet(net):
    with torch.no_grad():  # non-trivial BN statistics, so that a wrong channel would show
        for m in net.model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    plain = net.extract(net.full_spec())
    got = prune(net, 0.5, 8, model=plain, apply=True)  # Torch-Pruning prunes ``plain`` in place
    assert got.spec != net.full_spec()
    sub = permuted(net, got).extract(got.spec)
    x = torch.randn(3, *net.input_shape[1:])
    assert torch.allclose(plain(x), sub(x), atol=1e-5)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in sub.parameters())
    assert prune(net, 0.5, 8) == got  # deciding without pruning gives the same pruning


@pytest.mark.parametrize("block", [1, 8, 16])
def test_pruned_widths_stay_on_the_grid_above_the_floor(net, block):
    allowed = allowed_widths(net, block)
    for ratio in (0.0, 0.2, 0.5, 0.8, 1.0):
        got = prune(net, ratio, block)
        for g, w, kept in zip(net.groups, got.spec.widths, got.kept):
            assert w in allowed[g.channels] and w >= g.floor and len(kept) == w
            assert (w % block == 0 or w == g.channels) and list(kept) == sorted(set(kept))
    assert prune(net, 0.0, block).spec == net.full_spec()
    assert prune(net, 1.0, block).spec == floor_spec(net, block)


def test_the_training_epochs_are_shared_equally():
    assert split_batches(12, 4) == [3, 3, 3, 3]
    assert split_batches(10, 4) == [3, 3, 2, 2] and sum(split_batches(7, 3)) == 7


# -- torch-pruning: the pipeline --------------------------------------------------------------
def _tp_config(out, **kw) -> SearchConfig:
    base = dict(method="torch-pruning", options={"block": 8}, budgets="0.45,0.7,1.0", train_epochs=2,
                channel_groups=8, min_groups=2)
    return small_config(out, **{**base, **kw})


@pytest.fixture(scope="module")
def tp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tp")
    return out, run_search(_tp_config(out), MockLatency())


def test_torch_pruning_picks_fit_and_each_has_its_own_weights(tp_run):
    out, result = tp_run
    doc = load_result(out)
    assert doc["config"]["method"] == "torch-pruning" and doc["path"] == []
    net = DynamicNet.load(out / "weights.pt")
    for s, d in zip(result.subnets, doc["subnets"]):
        assert s.cost <= s.budget.limit(result.full_cost, 0.02) + 1e-9
        assert all(w % 8 == 0 or w == g.channels for g, w in zip(net.groups, s.spec.widths))
        # the pick's own network, as saved, gives the accuracy subnets.json records
        own = DynamicNet.load(out / d["weights"])
        assert s.spec in own.bn_stats
        assert T.accuracy(own, s.spec, result_holdout(result)) == pytest.approx(d["holdout_accuracy"])
    assert doc["subnets"][-1]["widths"] == list(net.full_spec().widths)
    assert _sha(out / "weights.pt") == _sha(out / doc["subnets"][-1]["weights"])  # the largest pick
    assert len({d["weights"] for d in doc["subnets"]}) == len({tuple(d["widths"]) for d in doc["subnets"]})
    assert {"search_s", "train_s", "train_cpu_s"} <= set(doc["timings"])


def result_holdout(result):
    """The run's holdout batches, rebuilt from its settings (as the pipeline splits them)."""
    from edgedyn.search.context import RunContext
    from edgedyn.search.dist import current

    return RunContext(replace(result.config, resume=False), MockLatency(), current(), None).splits.holdout


def test_torch_pruning_resumes_to_the_same_result(tp_run, tmp_path):
    out, _ = tp_run
    cfg = replace(_tp_config(tmp_path / "i"))
    interrupt_and_resume(cfg, (("train", 1), ("train", 2)))
    assert strip(load_result(tmp_path / "i")) == strip(load_result(out))
    for d in load_result(out)["subnets"]:
        assert _sha(tmp_path / "i" / d["weights"]) == _sha(out / d["weights"])


def test_deploy_serves_each_pruned_model_with_its_own_weights(tp_run, tmp_path):
    """A bundle from a torch-pruning run: each pick built from its own ``weights.pick<k>.pt``
    (deploy's fp32 holdout accuracy is the one the search recorded for that pick), the files'
    hashes in the manifest."""
    import json
    import shutil

    from edgedyn.deploy import deploy, load_run
    from edgedyn.errors import ArtifactError

    out, _ = tp_run
    doc = load_result(out)
    run = load_run(out)
    assert len({id(run.net_for(s.spec)) for s in run.subnets}) == len({s.spec for s in run.subnets}) > 1
    m = deploy(out, out=tmp_path / "bundle", threads=1, measure_iters=15, test_limit=48, check_samples=4,
               keep_dominated=True, progress=False)
    assert m.run["own_weights_sha256"].keys() == {d["weights"] for d in doc["subnets"]}
    for rec in m.subnets:
        searched = next(d for d in doc["subnets"] if d["widths"] == list(rec.spec.widths))
        assert rec.accuracy["holdout_fp32"] == pytest.approx(searched["holdout_accuracy"], abs=1e-6)
    # each built model computes its own network's sub-net, not weights.pt's (the largest pick's)
    import onnxruntime as ort

    x = torch.randn(*run.net.input_shape)  # batch 1, as built
    for rec in m.subnets[:-1]:
        got = ort.InferenceSession(str(m.root / rec.files["onnx"]["path"]),
                                   providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            own = run.net_for(rec.spec).extract(rec.spec).eval()(x).numpy()
            shared = run.net.extract(rec.spec).eval()(x).numpy()
        assert abs(got - own).max() < 1e-4 < abs(got - shared).max()

    # a hostile or broken record: one line naming the file and the field
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    for name, match in [("../weights.pt", "must name a .pt file"), ("nope.pt", "not found"),
                        (7, "must name a .pt file")]:
        d = json.loads(json.dumps(doc))
        d["subnets"][0]["weights"] = name
        (bad / "subnets.json").write_text(json.dumps(d))
        with pytest.raises(ArtifactError, match=rf"subnets\[0\].*{match}"):
            load_run(bad)
    other = DynamicNet.from_name("resnet20", num_classes=10, input_size=16)
    other.save(bad / "other.pt")
    d = json.loads(json.dumps(doc))
    d["subnets"][0]["weights"] = "other.pt"
    (bad / "subnets.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match=r"subnets\[0\]\.weights: .*different network"):
        load_run(bad)


def test_torch_pruning_options_and_unreachable_budgets(tmp_path):
    for opts, match in [({"importance": "l3"}, "importance"), ({"block": 0}, "block"),
                        ({"ratio_steps": 0}, "ratio_steps"), ({"prune_lr": 0}, "prune_lr")]:
        with pytest.raises(EdgedynError, match=match):
            SearchConfig(method="torch-pruning", options=opts).validate()
    with pytest.raises(EdgedynError, match="unreachable"):
        run_search(_tp_config(tmp_path / "u", budgets="0.01,1.0"), MockLatency())
    assert not (tmp_path / "u").exists()
