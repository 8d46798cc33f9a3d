"""edgedyn.runtime: bundle verification, selection policies, serving loop, CLI."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedyn.deploy import Manifest, SubnetRecord, deploy, load_run
from edgedyn.dynamic import SubnetSpec
from edgedyn.errors import EdgedynError
from edgedyn.runtime import Selector
from edgedyn.runtime.serve import load_schedule, make_budget, serve
from test_deploy import FAST, digits_test, fast_export, make_run_dir  # noqa: F401 - fixture re-used

SHAPE = (1, 3, 32, 32)
X = np.zeros(SHAPE, np.float32)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fast_export) -> Path:  # noqa: F811
    return make_run_dir(tmp_path_factory.mktemp("rt") / "run", ratios=(0.25, 1.0))


@pytest.fixture(scope="module")
def bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rt") / "bundle"
    deploy(run_dir, out=out, threads=1, **FAST)
    # the nets are untrained (accuracies near chance and tied); give the larger sub-net the
    # higher accuracy, as training would (the manifest itself is not hashed)
    doc = json.loads((out / "manifest.json").read_text())
    for i, s in enumerate(doc["subnets"]):
        s["accuracy"]["test"] = s["accuracy"]["holdout_fp32"] = 0.6 + 0.2 * i
    (out / "manifest.json").write_text(json.dumps(doc))
    return out


# -- a manifest with fake runners: policies without timing noise ---------------------------
class FakeRunner:
    input_shape = SHAPE

    def __init__(self, index: int) -> None:
        self.index = index
        self.calls = 0

    def infer(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.full((1, 10), self.index, np.float32)

    def deactivate(self) -> None:
        pass


def fake_selector(policy: str = "budget", medians=(1.0, 2.0, 4.0), accs=(0.7, 0.8, 0.9), **kw) -> Selector:
    subnets = [SubnetRecord(index=i, spec=SubnetSpec((4 * (i + 1),)), files={"model": {"path": f"m{i}", "sha256": ""}},
                            macs=10 ** (i + 1), params=i + 1, measured={"median": m, "p90": m, "p99": m, "n": 1},
                            accuracy={"test": a})
               for i, (m, a) in enumerate(zip(medians, accs))]
    m = Manifest(device={"kind": "cpu"}, fingerprint="cpu:x", backend={"name": "onnxruntime"}, precision="fp32",
                 threads=1, input={"shape": list(SHAPE), "dtype": "float32"}, subnets=subnets, path=Path("m.json"))
    return Selector(m, [FakeRunner(i) for i in range(len(subnets))], policy, **kw)


def test_budget_picks_most_accurate_that_fits() -> None:
    sel = fake_selector()
    assert [sel.select(b) for b in (100, 4.0, 3.9, 2.0, 1.5, 1.0)] == [2, 2, 1, 1, 0, 0]
    # accuracy, not size, decides: make the middle one the most accurate
    sel = fake_selector(accs=(0.7, 0.95, 0.9))
    assert sel.select(100) == 1 and sel.select(1.5) == 0
    out, info = sel.infer(X, 3.0)
    assert info.subnet == 1 and out[0, 0] == 1 and info.policy == "budget" and info.reason == "fits"


def test_budget_below_smallest_runs_fastest_and_reports_miss() -> None:
    sel = fake_selector(medians=(2.0, 1.0, 4.0))
    out, info = sel.infer(X, 0.5)
    assert info.subnet == 1 and info.reason == "below-smallest"
    assert info.met is (info.latency_ms <= 0.5)
    sel.observe(1, 0.9, budget_ms=0.5)
    assert sel.stats()["misses"][1] >= 1


def test_fixed_policy() -> None:
    sel = fake_selector("fixed", subnet=0)
    assert {sel.infer(X, b)[1].subnet for b in (0.1, 10.0, None)} == {0}
    with pytest.raises(EdgedynError, match="subnet 7 is out of range"):
        fake_selector("fixed", subnet=7)
    with pytest.raises(EdgedynError, match="policy 'fastest' is unknown"):
        fake_selector("fastest")


def test_adaptive_steps_down_under_contention_and_back_up() -> None:
    sel = fake_selector("adaptive", dwell=5, alpha=0.3, up_margin=0.1)
    budget = 4.5
    assert sel.select(budget) == 2
    for _ in range(6):  # the largest sub-net is observed at 3x its idle latency
        sel.observe(2, 12.0, budget)
    assert sel.slowdown > 2.25
    assert sel.select(budget) == 0  # 2.0 * slowdown no longer fits either
    sel.observe(0, 2.0 * sel.slowdown, budget)
    assert sel.select(budget) in (0, 1)
    for _ in range(40):  # contention gone: the small one runs at its idle latency
        sel.observe(sel.select(budget), sel.expected_ms[sel.select(budget)], budget)
    assert sel.slowdown == pytest.approx(1.0, abs=0.05)
    assert sel.select(budget) == 2


def test_adaptive_hysteresis_waits_for_dwell() -> None:
    sel = fake_selector("adaptive", dwell=10, alpha=0.5)
    for _ in range(5):
        sel.observe(2, 12.0, 4.5)
    assert sel.select(4.5) == 0
    sel.observe(0, 1.0, 4.5)
    # fast observations shrink the slowdown quickly, but the step up waits for the dwell
    ups = []
    for _ in range(12):
        i = sel.select(4.5)
        ups.append(i)
        sel.observe(i, sel.expected_ms[i], 4.5)
    first_up = next(k for k, i in enumerate(ups) if i != 0)
    assert first_up >= 8  # 10 calls on sub-net 0 (1 above + these) before stepping up


def test_thread_safety_counts_add_up() -> None:
    sel = fake_selector("adaptive")
    errors = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(300):
                sel.infer(X, float(rng.uniform(0.5, 5.0)))
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    st = sel.stats()
    assert sum(st["counts"]) == 8 * 300 == sum(r.calls for r in sel.runners)


class FlakyRunner(FakeRunner):
    """A fake sub-net whose every ``every``-th call fails (a backend error mid-serving)."""

    def __init__(self, index: int, every: int) -> None:
        super().__init__(index)
        self.every, self.failed = every, 0
        self._lock = threading.Lock()

    def infer(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            self.calls += 1
            fail = self.calls % self.every == 0
            self.failed += fail
        if fail:
            raise RuntimeError("backend hiccup")
        return np.full((1, 10), self.index, np.float32)


@pytest.mark.parametrize("policy", ["budget", "adaptive", "fixed"])
def test_concurrent_infer_keeps_statistics_consistent(policy: str) -> None:
    """Many threads, budgets that change every call (some below every sub-net), runners that
    fail now and then: the statistics add up to exactly what the callers saw."""
    manifest = fake_selector().manifest
    runners = [FlakyRunner(i, every) for i, every in enumerate((7, 11, 13))]
    sel = Selector(manifest, runners, policy, dwell=3, alpha=0.3, subnet=1)
    budgets = [1e-9, 1.5, 3.0, 10.0, None]  # 1e-9 ms: below every sub-net, always a miss
    seen: list[list[tuple[int, bool]]] = [[] for _ in range(6)]
    failures = [0] * 6

    def worker(t: int) -> None:
        for k in range(400):
            try:
                _, info = sel.infer(X, budgets[(k + t) % len(budgets)])
            except RuntimeError:
                failures[t] += 1
            else:
                seen[t].append((info.subnet, info.met))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = sel.stats()
    calls = [(i, met) for per in seen for i, met in per]
    assert st["counts"] == [sum(1 for i, _ in calls if i == s) for s in range(3)]
    assert st["misses"] == [sum(1 for i, met in calls if i == s and not met) for s in range(3)]
    assert st["errors"] == sum(failures) == sum(r.failed for r in runners) > 0
    assert [r.calls for r in runners] == [c + r.failed for c, r in zip(st["counts"], runners)]
    assert sum(st["counts"]) + st["errors"] == 6 * 400
    assert 0 <= st["switches"] < sum(st["counts"]) and st["current"] in range(3)
    if policy == "fixed":
        assert st["counts"][0] == st["counts"][2] == 0 and st["switches"] == 0
    else:
        assert st["misses"][0] >= 6 * 400 // len(budgets) - st["errors"]  # every 1e-9 budget ran the fastest


def test_policy_registry_names_the_cli_choices_and_builds_policies() -> None:
    from edgedyn.runtime import POLICIES, register_policy
    from edgedyn.runtime.cli_cmd import run as run_cmd
    from edgedyn.runtime.policies import BudgetPolicy

    assert list(POLICIES) == ["budget", "fixed", "adaptive"]
    choice = next(p for p in run_cmd.params if p.name == "policy").type
    assert list(choice.choices) == list(POLICIES)
    for name in POLICIES:
        sel = fake_selector(name)
        assert sel.policy == name and sel.infer(X, 3.0)[1].policy == name

    @register_policy
    class Smallest(BudgetPolicy):  # a toy policy: always the fastest sub-net
        name = "smallest"

        def decide(self, budget: float | None) -> tuple[int, str]:
            return self.ranking.fastest, "fits"

    try:
        sel = fake_selector("smallest", medians=(2.0, 1.0, 4.0))
        assert [sel.infer(X, b)[1].subnet for b in (None, 0.5, 100.0)] == [1, 1, 1]
    finally:
        del POLICIES["smallest"]
    with pytest.raises(EdgedynError, match="policy 'smallest' is unknown; choose one of budget, fixed, adaptive"):
        fake_selector("smallest")


def test_unknown_policy_is_one_line(bundle: Path) -> None:
    from click.testing import CliRunner

    from edgedyn.cli import cli

    with pytest.raises(EdgedynError, match="policy 'fastest' is unknown; choose one of budget, fixed, adaptive") as err:
        Selector.load(bundle, "fastest")
    assert "\n" not in str(err.value)
    res = CliRunner().invoke(cli, ["run", "--bundle", str(bundle), "--policy", "fastest", "--requests", "3"])
    errors = [ln for ln in res.output.splitlines() if ln.lower().startswith("error")]
    assert res.exit_code == 2 and len(errors) == 1 and "'fastest'" in errors[0], res.output
    assert all(name in errors[0] for name in ("budget", "fixed", "adaptive"))


# -- a real bundle ------------------------------------------------------------------------
def test_selector_on_bundle_matches_pytorch(bundle: Path, run_dir: Path) -> None:
    run = load_run(run_dir)
    test = digits_test()
    with Selector.load(bundle, "fixed") as sel:
        for i, rec in enumerate(sel.manifest.subnets):
            sel.fixed_subnet = i
            model = run.net.extract(rec.spec)
            for k in range(3):
                x = test[k][0].numpy()[None].astype(np.float32)
                out, info = sel.infer(x)
                assert info.subnet == i and info.met
                assert np.max(np.abs(out - model(torch.from_numpy(x)).detach().numpy())) <= 1e-4


def test_malformed_input_keeps_serving(bundle: Path) -> None:
    sel = Selector.load(bundle, "budget", budget_ms=100.0)
    for bad, msg in [(np.zeros((1, 3, 31, 32), np.float32), "shape"), (np.zeros(SHAPE, np.float64), "dtype"),
                     ([[0.0]], "numpy array"), (None, "numpy array")]:
        with pytest.raises(ValueError, match=msg):
            sel.infer(bad)
    out, info = sel.infer(X)
    assert out.shape == (1, 10) and sum(sel.stats()["counts"]) == 1
    inputs = np.stack([X, X, X])
    inputs_bad = [X, np.zeros((1, 3, 8, 8), np.float32), X]
    rep = serve(sel, inputs_bad, requests=9, budget=100.0)
    assert rep.errors == 3 and sum(rep.counts) == 6
    rep = serve(sel, inputs, requests=20, budget=1e-6)
    fastest = int(np.argmin(sel.expected_ms))
    assert rep.counts[fastest] == 20 and rep.total_misses == 20


def test_real_threads_hammering_bundle(bundle: Path) -> None:
    sel = Selector.load(bundle, "adaptive", budget_ms=5.0)
    errors = []

    def worker() -> None:
        try:
            for _ in range(40):
                sel.infer(X)
        except Exception as err:
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sum(sel.stats()["counts"]) == 160


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    target = b / Manifest.load(b).subnets[1].model_file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(EdgedynError, match=rf"{target.name}: sha256 .* does not match .*modified") as err:
        Selector.load(b)
    assert "\n" not in str(err.value)


def test_missing_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    (b / Manifest.load(b).subnets[0].files["onnx"]["path"]).unlink()
    with pytest.raises(EdgedynError, match=r"subnet0\.onnx: file listed in .* is missing"):
        Selector.load(b)


def test_other_device_or_backend_is_refused(bundle: Path, tmp_path: Path) -> None:
    b = _copy(bundle, tmp_path)
    doc = json.loads((b / "manifest.json").read_text())
    doc["fingerprint"] = "cpu:Some Other CPU"
    (b / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(EdgedynError, match="field 'fingerprint' is 'cpu:Some Other CPU'"):
        Selector.load(b)
    assert Selector.load(b, allow_other_device=True).infer(X)[0].shape == (1, 10)
    with pytest.raises(EdgedynError, match="field 'backend.name' is 'onnxruntime'"):
        Selector.load(bundle, backend="tensorrt")


# -- schedules and the CLI -------------------------------------------------------------------
def test_schedules_and_ramp(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    p.write_text("[[10, 1.0], [0, 5.0], [20, 3.0]]")
    fn = make_budget(None, p, None, requests=30, duration_s=None)
    assert [fn(k, 0.0) for k in (0, 9, 10, 19, 25)] == [5.0, 5.0, 1.0, 1.0, 3.0]
    fn = make_budget(None, None, "4:2", requests=10, duration_s=None)
    assert fn(0, 0) == 4.0 and fn(5, 0) == 3.0 and fn(10, 0) == 2.0
    fn = make_budget(None, None, "4:2", requests=None, duration_s=2.0)
    assert fn(999, 1.0) == 3.0
    p.write_text('[[0, "x"]]')
    with pytest.raises(EdgedynError, match="entry 0 must be"):
        load_schedule(p)
    with pytest.raises(EdgedynError, match="--ramp 'a:b'"):
        make_budget(None, None, "a:b", 10, None)
    sel = fake_selector()
    rep = serve(sel, [X], requests=30, budget=make_budget(None, None, "5:0.5", 30, None))
    assert rep.switches >= 2 and sum(rep.counts) == 30 and rep.counts[2] > 0 and rep.counts[0] > 0


def test_cli_run_reports_use_latency_misses_switches(bundle: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgedyn.cli import _Group
    from edgedyn.deploy.cli_cmd import deploy as deploy_cmd
    from edgedyn.runtime.cli_cmd import run as run_cmd

    group = _Group(name="edgedyn", commands={"run": run_cmd, "deploy": deploy_cmd})
    r = CliRunner()
    # the ramp starts far above every sub-net (the most accurate runs) and ends near 0 (misses)
    res = r.invoke(group, ["run", "--bundle", str(bundle), "--policy", "adaptive", "--requests", "200",
                           "--ramp", "10:0.0001", "--quantile", "median", "--input", "calib/digits_32.npy",
                           "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "policy adaptive: 200 requests" in res.output and "p99 ms" in res.output and "switches" in res.output
    rep = json.loads((tmp_path / "r.json").read_text())
    assert sum(s["count"] for s in rep["subnets"]) == 200 and rep["misses"] > 0 and rep["switches"] >= 1
    res = r.invoke(group, ["run", "--bundle", str(tmp_path / "none"), "--requests", "3"])
    assert res.exit_code == 2 and res.output.strip().startswith("error:") and "file not found" in res.output
    res = r.invoke(group, ["run", "--bundle", str(bundle), "--requests", "3", "--duration", "1"])
    assert res.exit_code == 2 and "not both" in res.output


def test_decision_made_ahead_follows_the_state() -> None:
    """infer() reuses the decision taken after the previous call only for the same budget, and
    that decision reflects the observation just made."""
    sel = fake_selector("adaptive", dwell=1000, alpha=0.5)
    assert sel.infer(X, 4.5)[1].subnet == 2
    for _ in range(4):
        sel.observe(2, 12.0, 4.5)  # contention (observe() discards the decision made ahead)
    assert sel.infer(X, 4.5)[1].subnet == 0
    info = sel.infer(X, 100.0)[1]  # another budget: decided afresh (the dwell holds the step up)
    assert info.subnet == 0 and info.reason == "hysteresis"
    sel2 = fake_selector("budget")
    assert [sel2.infer(X, b)[1].subnet for b in (4.0, 4.0, 1.5, 1.5, 4.0)] == [2, 2, 0, 0, 2]


def test_warmup_runs_every_subnet_outside_the_statistics():
    sel = fake_selector("adaptive")
    sel.warmup(7)
    assert [r.calls for r in sel.runners] == [7, 7, 7]
    assert sel.stats()["counts"] == [0, 0, 0] and sel.slowdown == 1.0
    sel.infer(X, 10.0)
    assert sum(sel.stats()["counts"]) == 1


def test_selector_ranks_by_holdout_accuracy_not_test() -> None:
    """Decisions use the run's holdout; the test split only reports (older bundles: test)."""
    sel = fake_selector(accs=(0.7, 0.8, 0.9))
    for s, hold in zip(sel.manifest.subnets, (0.9, 0.8, 0.7)):
        s.accuracy["holdout_fp32"] = hold
    again = Selector(sel.manifest, [FakeRunner(i) for i in range(3)], policy="budget")
    assert again.order == [0, 1, 2]
    assert sel.order == [2, 1, 0]
