"""tools/bench_search.py's comparison, on a hand-made report (no training, no timing)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "tools" / "bench_search.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


SMALL, MID, FULL = [1, 1], [2, 1], [2, 2]


def _report(tmp_path: Path) -> Path:
    """Two seeds; US-Nets deploys SMALL and FULL, method x also MID (0.45 ms by the table, 0.55 measured)."""
    def sub(w, hold, test):
        return {"widths": w, "holdout": hold, "test": test, "budget": None, "before_train": None}

    runs = {}
    for seed, x_small in enumerate([0.73, 0.71]):
        runs[f"seed{seed}/usnet"] = {"dir": "u", "wall_s": 100.0, "resumed": False, "own_cpu_s": 100.0,
                                     "phase_cpu_s": 80.0, "deployed": [sub(SMALL, 0.70, 0.70), sub(FULL, 0.80, 0.80)]}
        runs[f"seed{seed}/x"] = {"dir": "x", "wall_s": 150.0, "resumed": False, "own_cpu_s": 140.0,
                                 "phase_cpu_s": 120.0, "deployed": [sub(SMALL, 0.71, x_small), sub(MID, 0.76, 0.76),
                                              sub(FULL, 0.80, 0.81)]}
    lat = [{"widths": SMALL, "median": 0.3, "predicted": 0.3}, {"widths": FULL, "median": 1.0, "predicted": 1.0},
           {"widths": MID, "median": 0.55, "predicted": 0.45}]
    out = tmp_path / "bench"
    out.mkdir()
    (out / "bench_search.json").write_text(json.dumps(
        {"schema": "edgedyn.bench_search/2", "budgets": [0.5, 1.0], "latency": lat, "runs": runs}))
    return out


def test_summarize_only_pairs_seeds_and_serves_what_fits(tmp_path, capsys):
    bench = _bench()
    out = _report(tmp_path)
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x"]) == 0
    md = (out / "bench_search.seeds0-1.md").read_text()
    # measured: MID (0.55 ms) does not fit 0.5, so x serves SMALL there: +0.03 and +0.01 over US-Nets
    assert "| x | 2.00 ± 1.00 | 1.00 ± 0.00 | 1.50 ± 0.50 |" in md
    # predicted: MID (0.45 ms) fits: +0.06 on both seeds at 0.5
    assert "| x | 6.00 ± 0.00 | 1.00 ± 0.00 | 3.50 ± 0.00 |" in md
    assert "1.40 ± 0.00 (2 seeds)" in md  # CPU x US-Nets
    assert "| 120 ± 0 (2) | 1.50 ± 0.00 (2) |" in md  # ranking, search and training CPU against US-Nets' training


def test_summarize_only_one_seed_and_a_bad_report(tmp_path, capsys):
    bench = _bench()
    out = _report(tmp_path)
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "1", "--methods", "usnet,x"]) == 0
    assert "| x | 1.00 | 1.00 | 1.00 |" in (out / "bench_search.seeds1.md").read_text()
    (out / "bench_search.json").write_text("{not json")
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0", "--methods", "usnet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bench_search.json" in err[0]


def test_a_timing_is_valid_when_the_machine_drifted_uniformly_and_the_recheck_fits():
    recheck_verdict = _bench().recheck_verdict

    def rc(scale, offset, trusted=True):
        return {"correction": {"form": "scale+offset", "scale": scale, "offset_ms": offset}, "trusted": trusted,
                "problem": None if trusted else "probes 12% off"}

    uniform = recheck_verdict(rc(1.12, 0.0), 0.2, 0.8)  # 12 % slower everywhere: budgets are fractions
    assert uniform["valid"] and uniform["ratio_small"] == uniform["ratio_full"] == 1.12
    skewed = recheck_verdict(rc(1.0, 0.04), 0.2, 0.8)  # small sub-nets 20 % slower, the full model 5 %
    assert not skewed["valid"] and "not uniform" in skewed["why"]
    assert skewed["ratio_small"] == 1.2 and skewed["ratio_full"] == 1.05
    unfit = recheck_verdict(rc(1.0, 0.0, trusted=False), 0.2, 0.8)
    assert not unfit["valid"] and "not trusted" in unfit["why"]


def test_reference_takes_the_paired_differences_against_another_variant(tmp_path, capsys):
    bench = _bench()
    out = _report(tmp_path)
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x",
                       "--reference", "x"]) == 0
    md = (out / "bench_search.seeds0-1.md").read_text()
    assert "| x | 2.00 ± 1.00 | 1.00 ± 0.00 | 1.50 ± 0.50 |" in md  # against US-Nets, as before
    assert "paired difference against x (points)" in md
    # US-Nets against x: the same seeds' differences, the other way round (measured, then predicted)
    assert "| usnet | -2.00 ± 1.00 | -1.00 ± 0.00 | -1.50 ± 0.50 |" in md
    assert "| usnet | -6.00 ± 0.00 | -1.00 ± 0.00 | -3.50 ± 0.00 |" in md
    assert "against x" in capsys.readouterr().out


def test_a_reference_that_is_not_run_is_a_one_line_error(tmp_path, capsys):
    bench = _bench()
    out = _report(tmp_path)
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x",
                       "--reference", "torch-pruning"]) == 2
    assert "not in --methods" in capsys.readouterr().err
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x,y",
                       "--reference", "y"]) == 2
    err = capsys.readouterr().err
    assert "no run of it" in err and len(err.strip().splitlines()) == 1


def test_predicted_only_serves_by_the_table_and_labels_every_figure(tmp_path, capsys):
    """MID is 0.45 ms by the table: at the budget 0.5 x serves it on both seeds (the measured
    0.55 ms would not fit), and the report says the latencies are predictions."""
    bench = _bench()
    doc = json.loads((_report(tmp_path) / "bench_search.json").read_text())
    runs, subs = {}, {}
    for key, v in doc["runs"].items():
        seed, m = int(key.split("/")[0][4:]), key.split("/", 1)[1]
        runs[(seed, m)], subs[(seed, m)] = {k: v[k] for k in v if k != "deployed"}, v["deployed"]
    out = tmp_path / "pred"
    out.mkdir()
    args = bench.parse_args(["--out", str(out), "--budgets", "0.5,1.0", "--methods", "usnet,x", "--predicted-only"])
    predicted = {tuple(e["widths"]): e["predicted"] for e in doc["latency"]}
    assert bench.predicted_report(args, runs, subs, predicted) == 0
    assert "PREDICTED by the table (nothing timed)" in capsys.readouterr().out
    rep = json.loads((out / "bench_search.predicted.json").read_text())
    assert rep["latency_source"] == "predicted" and not (out / "bench_search.json").exists()
    assert {tuple(e["widths"]): e["predicted"] for e in rep["latency"]} == predicted  # kept for --from
    served = [r["widths"] for r in rep["per_budget"]["x"][0]["runs"]]
    assert served == [MID, MID]
    vs = rep["summary"]["x"]["vs_usnet"]["per_budget"][0]
    assert abs(vs["mean"] - 0.06) < 1e-9  # 0.76 - 0.70 on both seeds
    assert (out / "bench_search.predicted.md").read_text().startswith("Every latency below is the table's PREDICTION")
    assert bench.predicted_report(args, {}, {}, predicted) == 2


def _predicted_report(tmp_path: Path, name: str, seeds: list[int], methods: list[str]) -> Path:
    """A ``--predicted-only`` report of the hand-made runs, for ``seeds`` and ``methods`` only."""
    doc = json.loads((_report(tmp_path / name) / "bench_search.json").read_text())
    runs = {k: v for k, v in doc["runs"].items()
            if int(k.split("/")[0][4:]) in seeds and k.split("/", 1)[1] in methods}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({**doc, "latency_source": "predicted", "runs": runs,
                                "args": {"data_limit": 4000, "budgets": "0.5,1.0"}}))
    return path


def test_from_pools_reports_of_other_sessions_at_the_predicted_latency(tmp_path, capsys):
    """Seed 0 of both rows in one report, seed 1 of US-Nets in a second and of x in a third:
    pooled, x is paired with US-Nets on both seeds, served by the table's prediction (MID fits 0.5)."""
    bench = _bench()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    a = _predicted_report(tmp_path, "a", [0], ["usnet", "x"])
    b = _predicted_report(tmp_path, "b", [1], ["usnet"])
    c = _predicted_report(tmp_path, "c", [1], ["x"])
    out = tmp_path / "pooled"
    assert bench.main(["--out", str(out), "--summarize-only", "--from", f"{a},{b},{c}", "--seeds", "0,1",
                       "--methods", "usnet,x"]) == 0
    rep = json.loads((out / "bench_search.pooled.json").read_text())
    assert rep["latency_source"] == "predicted" and rep["sources"] == [str(a), str(b), str(c)]
    assert [r["widths"] for r in rep["per_budget"]["x"][0]["runs"]] == [MID, MID]
    vs = rep["summary"]["x"]["vs_usnet"]
    assert vs["per_budget"][0]["n"] == 2 and abs(vs["per_budget"][0]["mean"] - 0.06) < 1e-9
    md = (out / "bench_search.pooled.md").read_text()
    assert md.startswith("Pooled from ") and "table's PREDICTION" in md


def test_from_refuses_a_run_twice_other_protocols_and_measured_reports(tmp_path, capsys):
    bench = _bench()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = _predicted_report(tmp_path, "a", [0, 1], ["usnet", "x"])
    b = _predicted_report(tmp_path, "b", [1], ["x"])
    argv = ["--out", str(tmp_path / "p"), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x", "--from"]
    assert bench.main(argv + [f"{a},{b}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(b) in err[0] and "runs.seed1/x" in err[0]
    doc = json.loads(b.read_text())
    b.write_text(json.dumps({**doc, "runs": {}, "args": {"data_limit": 8000}}))
    assert bench.main(argv + [f"{a},{b}"]) == 2
    assert "args.data_limit" in capsys.readouterr().err
    doc.pop("latency_source")
    b.write_text(json.dumps({**doc, "runs": {}}))
    assert bench.main(argv + [f"{a},{b}"]) == 2
    assert "measured and predicted never pool" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_from_repools_a_committed_report_written_before_reports_kept_their_latencies(tmp_path, monkeypatch):
    """results/bench_search_r8s2_b.json (round 8) kept no latency list: --from prices its sub-nets
    by its table again, checks them against the latencies it served at, and rebuilds its tables
    exactly (this fails if profiles/cpu-resnet20.json is re-profiled: the report's table is gone)."""
    bench = _bench()
    src = ROOT / "results" / "bench_search_r8s2_b.json"
    rows = "usnet,usnet-aligned,torch-pruning,autoslim-final+latency,usnet-mean,autoslim-mean+latency"
    monkeypatch.chdir(ROOT)  # the report names its table relative to the checkout
    assert bench.main(["--out", str(tmp_path), "--summarize-only", "--from", str(src), "--seeds", "100,101",
                       "--methods", rows, "--reference", "usnet-mean"]) == 0
    md = (tmp_path / "bench_search.pooled.md").read_text().split("\n", 2)[2]
    committed = (ROOT / "results" / "bench_search_r8s2_b.md").read_text()
    assert md.startswith(committed)  # the same tables, then (added since) the non-uniform count
    extra = md[len(committed):]
    assert "| usnet | 0 of 8 |" in extra and "| usnet-mean | 0 of 8 |" in extra
    counts = dict(line.strip("| ").split(" | ") for line in extra.splitlines()[3:] if line)
    assert set(counts) == set(rows.split(","))


def test_across_tables_prices_each_seed_by_its_own_table(tmp_path, capsys):
    """Seed 0 searched with table T1 (MID 0.45 ms of a 1.0 ms full model), seed 1 with T2,
    where MID costs 0.6 ms: pooled --across-tables, x serves MID at 0.5 on seed 0 only (on
    seed 1 it does not fit, and SMALL is served). Without the flag the tables are refused, and
    a seed whose rows come from two tables is refused."""
    bench = _bench()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "c").mkdir()
    a = _predicted_report(tmp_path, "a", [0], ["usnet", "x"])
    b = _predicted_report(tmp_path, "b", [1], ["usnet", "x"])
    doc = json.loads(a.read_text())
    a.write_text(json.dumps({**doc, "args": {**doc["args"], "table": "t1.json"}}))
    doc = json.loads(b.read_text())
    for e in doc["latency"]:
        if e["widths"] == MID:
            e["predicted"] = 0.6
    b.write_text(json.dumps({**doc, "args": {**doc["args"], "table": "t2.json"}}))
    out = tmp_path / "pooled"
    argv = ["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x", "--from", f"{a},{b}"]
    assert bench.main(argv) == 2
    assert "args.table" in capsys.readouterr().err
    assert bench.main(argv + ["--across-tables"]) == 0
    rep = json.loads((out / "bench_search.pooled.json").read_text())
    assert rep["table_of_seed"] == {"0": "t1.json", "1": "t2.json"}
    assert [r["widths"] for r in rep["per_budget"]["x"][0]["runs"]] == [MID, SMALL]
    vs = rep["summary"]["x"]["vs_usnet"]["per_budget"][0]
    assert abs(vs["mean"] - (0.06 + 0.01) / 2) < 1e-9  # seed 0: 0.76 - 0.70; seed 1: 0.71 - 0.70
    assert "Pooled across tables" in (out / "bench_search.pooled.md").read_text()
    c = _predicted_report(tmp_path, "c", [1], ["usnet"])  # seed 1's US-Nets under the first table
    doc = json.loads(c.read_text())
    c.write_text(json.dumps({**doc, "args": {**doc["args"], "table": "t1.json"}}))
    doc = json.loads(b.read_text())
    b.write_text(json.dumps({**doc, "runs": {k: v for k, v in doc["runs"].items() if k.endswith("/x")}}))
    assert bench.main(argv[:-1] + [f"{a},{b},{c}", "--across-tables"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(c) in err[0] and "seed 1" in err[0]


def test_a_seed_that_misses_a_budget_is_counted_in_the_cells_it_leaves(tmp_path, capsys):
    bench = _bench()
    out = _report(tmp_path)
    rep = json.loads((out / "bench_search.json").read_text())
    # seed 1's x deploys nothing that fits 0.5 when measured (MID is 0.55 ms): a miss on that seed only
    rep["runs"]["seed1/x"]["deployed"] = [d for d in rep["runs"]["seed1/x"]["deployed"] if d["widths"] != SMALL]
    (out / "bench_search.json").write_text(json.dumps(rep))
    assert bench.main(["--out", str(out), "--summarize-only", "--seeds", "0,1", "--methods", "usnet,x"]) == 0
    md = (out / "bench_search.seeds0-1.md").read_text()
    # the 0.5 cell and the average hold seed 0 alone (+3 at 0.5, +1 at 1.0); the 1.0 cell both seeds
    assert "| x | 3.00 (n=1) | 1.00 ± 0.00 | 2.00 (n=1) |" in md
    assert "(n=1)" in capsys.readouterr().out


def test_across_timings_pools_valid_measured_reports_each_seed_at_its_own_timing(tmp_path, capsys):
    """Two measured reports (seeds 0-1 timed once, seeds 2-3 in another run where MID measured
    0.45 ms): pooled --across-timings, x serves MID at 0.5 on seeds 2-3 only. Without the flag,
    or with a timing that failed its validity rule, the pool is refused in one line."""
    bench = _bench()
    valid = {"recheck": {"valid": True, "why": "drift uniform"}}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a, b = (_report(tmp_path / d) / "bench_search.json" for d in "ab")
    doc = json.loads(a.read_text())
    a.write_text(json.dumps({**doc, "timing": valid}))
    doc = json.loads(b.read_text())
    doc["runs"] = {k.replace("seed0", "seed2").replace("seed1", "seed3"): v for k, v in doc["runs"].items()}
    for e in doc["latency"]:
        if e["widths"] == MID:
            e["median"] = 0.45
    b.write_text(json.dumps({**doc, "timing": valid}))
    out = tmp_path / "pooled"
    argv = ["--out", str(out), "--summarize-only", "--seeds", "0,1,2,3", "--methods", "usnet,x", "--from", f"{a},{b}"]
    assert bench.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--across-timings" in err[0]
    assert bench.main(argv + ["--across-timings"]) == 0
    rep = json.loads((out / "bench_search.pooled.json").read_text())
    assert [r["widths"] for r in rep["per_budget"]["x"][0]["runs"]] == [SMALL, SMALL, MID, MID]
    assert set(rep["timings"]) == {str(a), str(b)}
    assert "Pooled across timings" in (out / "bench_search.pooled.md").read_text()
    b.write_text(json.dumps({**doc, "timing": {"recheck": {"valid": False}}}))
    assert bench.main(argv + ["--across-timings"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(b) in err[0] and "timing.recheck.valid" in err[0]


def test_a_row_that_reuses_us_nets_finds_the_run_an_earlier_call_finished(tmp_path, monkeypatch):
    """``--methods usnet-aligned`` alone (a queue running one row per call): it reuses the
    US-Nets run an earlier call left on disk, charged its wall time, and is refused in one
    line where there is none."""
    from types import SimpleNamespace

    import edgedyn.search as search
    from edgedyn.errors import EdgedynError
    from edgedyn.profile import LatencyTable

    bench = _bench()
    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg, *a, **k: seen.append(cfg) or SimpleNamespace(timings={}))
    table = LatencyTable.load(ROOT / "profiles" / "cpu-resnet20.json")
    sdir = tmp_path / "seed0"
    (sdir / "usnet").mkdir(parents=True)
    (sdir / "pretrained.pt").write_bytes(b"")
    args = bench.parse_args(["--out", str(tmp_path), "--seeds", "0", "--methods", "usnet-aligned"])
    try:
        bench.run_all(args, table, lambda m: None)
        raise AssertionError("no US-Nets run: refused")
    except EdgedynError as err:
        assert "run usnet first" in str(err) and "bench_done.json" in str(err)
    (sdir / "usnet" / "bench_done.json").write_text(json.dumps({"wall_s": 100.0}))
    runs = bench.run_all(args, table, lambda m: None)
    assert list(runs) == [(0, "usnet-aligned")] and runs[(0, "usnet-aligned")]["reused_usnet_s"] == 100.0
    assert seen[0].weights == str(sdir / "usnet" / "weights.pt") and seen[0].train_epochs == 0
