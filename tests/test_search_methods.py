"""The search methods' registry, their options, the typed checkpoint state, and a toy
method registered from outside that runs through the whole pipeline (the worked example
of docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch

from edgedyn.dynamic import SubnetSpec
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.search import MethodOptions, PathPoint, SearchConfig, get_method, load_result, method_names, run_search
from edgedyn.search.checkpoint import Leg, RunState, Selected, load_checkpoint, save_checkpoint
from edgedyn.search.methods.base import Method, Picks
from edgedyn.search.registry import register_method, unregister_method, variants
from test_search import MockLatency, interrupt_and_resume, small_config, strip


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


# -- the toy method of docs/design.md ---------------------------------------------
@dataclass(frozen=True)
class RandomOptions(MethodOptions):
    samples: int = 8  # random sub-nets drawn

    def validate(self, config: object) -> None:
        if self.samples < 1:
            raise EdgedynError(f"samples must be >= 1, got {self.samples}")


class RandomSearch(Method):
    """Random search: the most accurate of ``samples`` random sub-nets under each budget."""

    name = "random"
    Options = RandomOptions
    phases = ("pretrain", "search")
    options: RandomOptions

    def search_path(self, path: list[PathPoint]) -> None:
        ctx = self.ctx
        for i in range(len(path), self.options.samples + 1):  # a resumed run draws the rest
            gen = torch.Generator().manual_seed(ctx.seed("search", i))
            spec = SubnetSpec(tuple(g.widths_from()[int(torch.randint(len(g.widths_from()), (1,), generator=gen))]
                                    for g in self.net.groups))
            loss, acc = self.scorer.record(spec)
            ctx.state.add_point(PathPoint(spec, float(ctx.cost_model.cost(self.net, spec)), acc, i, loss=loss))
            ctx.save("search", i)

    def select(self) -> Picks:
        kept = self.kept_selection()
        if kept is not None:
            return kept
        ctx, floor = self.ctx, self.net.min_spec()
        points = [replace(p, cost=ctx.price(p.spec)) for p in ctx.state.path]
        points.append(PathPoint(floor, ctx.price(floor), self.scorer.record(floor)[1], -1))
        return self.keep_selection(ctx.pick(points))


@pytest.fixture
def toy():
    register_method(RandomSearch)
    yield RandomSearch
    unregister_method("random")


# -- the registry -----------------------------------------------------------------------
def test_registry_names_the_builtin_methods_and_their_variants():
    builtin = ("autoslim", "progressive", "torch-pruning", "usnet", "usnet-aligned")
    assert set(method_names()[:5]) == set(builtin)  # registered first (in import order)
    for name in builtin:
        assert get_method(name).name == name
    v = variants()
    assert {"usnet", "paper", "autoslim+latency", "autoslim+flops"} <= set(v)
    assert v["paper"].overrides["method"] == "progressive" and v["autoslim+flops"].cost == "flops"
    for variant in v.values():  # every variant is a valid configuration of its method
        SearchConfig(**{k: x for k, x in variant.overrides.items()}).validate()


def test_unknown_method_is_a_one_line_error(tmp_path):
    with pytest.raises(EdgedynError) as err:
        get_method("nope")
    assert "'nope' is unknown" in str(err.value) and "autoslim" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(EdgedynError, match="'nope' is unknown"):
        run_search(small_config(tmp_path / "o", method="nope"), MockLatency())
    assert not (tmp_path / "o").exists()


def test_cli_method_choices_come_from_the_registry():
    from edgedyn.search.cli_cmd import search

    method = next(p for p in search.params if p.name == "method")
    assert tuple(method.type.choices) == method_names()


def test_a_name_is_registered_once(toy):
    class Other(RandomSearch):
        pass

    with pytest.raises(EdgedynError, match="registered already"):
        register_method(Other)
    assert get_method("random") is RandomSearch


# -- options ----------------------------------------------------------------------------
@pytest.mark.parametrize("method,field,value,match", [
    ("autoslim", "direction", "up", "direction"),
    ("autoslim", "slim_step", 1.5, "slim_step"),
    ("autoslim", "supernet_students", "all", "supernet_students"),
    ("autoslim", "final_epochs", 9, "final_epochs"),
    ("progressive", "criterion", "best", "criterion"),
    ("progressive", "ranking", "l2", "ranking"),
    ("progressive", "threshold", "fifty", "threshold"),
    ("progressive", "finetune_check", 0, "finetune_check"),
])
def test_a_method_validates_its_own_options(method, field, value, match):
    with pytest.raises(EdgedynError, match=match) as err:
        SearchConfig(method=method, **{field: value}).validate()
    assert "\n" not in str(err.value)
    other = "progressive" if method == "autoslim" else "autoslim"
    SearchConfig(method=other, **{field: value}).validate()  # not the other method's option: ignored


def test_options_read_from_the_config_and_recorded_as_before():
    cfg = SearchConfig(method="autoslim", train_epochs=6, slim_step=0.1)
    opts = cfg.method_options()
    assert opts.slim_step == 0.1 and opts.final(6) == 2
    d = cfg.to_dict()
    assert d["final_epochs"] == 2 and "options" not in d  # the default resolved; no options key
    assert SearchConfig(method="progressive").to_dict()["final_epochs"] is None
    assert list(d)[:3] == ["model", "data", "input_size"]


def test_extra_options_of_a_method_are_validated(toy):
    assert SearchConfig(method="random", options={"samples": 3}).method_options() == RandomOptions(3)
    with pytest.raises(EdgedynError, match="samples must be >= 1"):
        SearchConfig(method="random", options={"samples": 0}).validate()
    with pytest.raises(EdgedynError, match="no option 'nope'") as err:
        SearchConfig(method="random", options={"nope": 1}).validate()
    assert "samples" in str(err.value)


# -- a toy method through the pipeline ----------------------------------------------------
def test_a_registered_toy_method_runs_through_the_pipeline(toy, tmp_path):
    cfg = small_config(tmp_path / "r", method="random", options={"samples": 4})
    result = run_search(cfg, MockLatency())
    doc = load_result(tmp_path / "r")
    assert doc["config"]["method"] == "random" and doc["config"]["options"] == {"samples": 4}
    assert len(doc["path"]) == 5 and doc["legs"] == []  # the full model and 4 draws
    drawn = {SubnetSpec.of(p["widths"]) for p in doc["path"]} | {result.net.min_spec()}
    for s in result.subnets:
        assert s.spec in drawn and s.cost <= s.budget.limit(result.full_cost) + 1e-9
    assert result.subnets[-1].spec == result.net.full_spec()
    assert {"pretrain_s", "search_s", "train_s", "final_s"} <= set(result.timings)
    # resumable like the built-in methods: interrupted mid-search, the same result
    interrupt_and_resume(replace(cfg, out=str(tmp_path / "i")), (("search", 2), ("train", 1)))
    assert strip(load_result(tmp_path / "i")) == strip(doc)


# -- the checkpoint state ---------------------------------------------------------------------
def test_checkpoint_state_round_trips_and_checks_its_schema(tmp_path):
    state = RunState(phase="search", index=3, path=[PathPoint(SubnetSpec((8, 16)), 1.5, 0.5, 0, loss=0.7)],
                     steps=[{"index": 1}], selection=[Selected("0.5", PathPoint(SubnetSpec((8, 8)), 1.0, 0.4, 1),
                                                              {"test_accuracy": 0.4})],
                     timings={"search_s": 1.0}, legs=[Leg([8, 8], "0.5", 1.2, [0, 1], True)])
    path = tmp_path / "checkpoint.pt"
    weights = {"w": torch.ones(2)}
    save_checkpoint(path, {"seed": 1}, weights, state)
    got_weights, got = load_checkpoint(path, {"seed": 1})
    assert got == state and torch.equal(got_weights["w"], weights["w"])
    with pytest.raises(EdgedynError, match="settings differ \\(seed\\)"):
        load_checkpoint(path, {"seed": 2})
    blob = torch.load(path, weights_only=True)
    torch.save({**blob, "schema": "edgedyn.search_checkpoint/3"}, path)
    with pytest.raises(ArtifactError, match="schema"):
        load_checkpoint(path, {"seed": 1})


def test_cli_option_flag_reaches_the_method_options(toy, tmp_path):
    from click.testing import CliRunner

    from edgedyn.search.cli_cmd import build_config, search

    ctx = search.make_context("search", ["--cost", "flops", "--option", "samples=3", "--option", "note=x y",
                                         "--out", str(tmp_path / "o")])
    config, cost, table = build_config({**ctx.params, "method": "random"})
    assert config.options == {"samples": 3, "note": "x y"} and cost.name == "flops" and table is None
    with pytest.raises(EdgedynError, match="no option 'note'"):
        config.validate()
    config.options.pop("note")
    assert config.method_options() == RandomOptions(3)
    with pytest.raises(EdgedynError, match="'slim_step' of method 'autoslim' is a setting of its own"):
        SearchConfig(options={"slim_step": 0.1}).validate()
    res = CliRunner().invoke(search, ["--cost", "flops", "--option", "samples", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "KEY=VALUE" in res.output
    assert not (tmp_path / "o").exists()


def test_a_method_with_bad_phases_is_refused():
    for phases in [("search",), ("pretrain", "train"), ("pretrain", "search", "rank"), ("pretrain", "rank")]:
        bad = type("Bad", (RandomSearch,), {"name": "bad", "phases": phases})
        with pytest.raises(EdgedynError, match="'phases' must be"):
            register_method(bad)
    assert "bad" not in method_names()
