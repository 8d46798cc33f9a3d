"""The profiler and latency table, with a deterministic fake backend (no timing noise)."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedyn.backends.base import Backend, Runner
from edgedyn.cli import cli
from edgedyn.dynamic import DynamicNet, SubnetSpec
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.profile import BlockKey, LatencyTable, all_keys, model_blocks, subnet_keys
from edgedyn.profile.profiler import ProfileConfig, Profiler

SCALE, OFFSET = 1.25, 0.05


def fake_ms(key: BlockKey) -> float:
    """Bilinear in (c_in, c_out) within one geometry (linear for one-axis blocks): exact to interpolate."""
    hw = key.in_h * key.in_w
    if key.depthwise or key.op not in ("conv", "linear"):
        return 1e-3 + 1e-6 * hw * (key.c_in + 2) * key.kernel ** 2 / key.stride
    return 1e-3 + 1e-7 * hw * (key.c_in + 2) * (key.c_out + 3) * key.kernel ** 2 / key.stride


class FakeRunner(Runner):
    input_shape = (1,)

    def __init__(self, ms):
        super().__init__()
        self.ms = ms

    def _infer(self, x):
        return x

    def timed_call(self):
        return self.ms


class FakeBackend(Backend):
    name = "onnxruntime"
    artifact_suffix = ".fake"
    net = None
    block_calls = 0
    fail_after = None

    @classmethod
    def available(cls):
        return True

    def version(self):
        return "fake-1"

    def default_threads(self):  # ONNX Runtime's hook: a CPU thread count, chosen by timing
        from edgedyn.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend.default_threads(self)

    def block_runner(self, key, workdir=None):
        FakeBackend.block_calls += 1
        if FakeBackend.fail_after is not None and FakeBackend.block_calls > FakeBackend.fail_after:
            raise KeyboardInterrupt
        return FakeRunner(fake_ms(key))

    def prepare(self, module, example, workdir):
        mods = dict(module.named_modules())
        spec = SubnetSpec(tuple(mods[g.name].out_channels for g in self.net.groups))
        total = sum(fake_ms(k) for k in subnet_keys(self.net, spec))
        return FakeRunner(SCALE * total + OFFSET)

    def build(self, onnx_path, out_path):
        return out_path

    def load(self, artifact, input_shape):
        return FakeRunner(1.0)


@pytest.fixture
def fake(monkeypatch):
    FakeBackend.block_calls = 0
    FakeBackend.fail_after = None
    monkeypatch.setattr(Profiler, "_backend", lambda self, **kw: FakeBackend(dataclasses.replace(self.options, **kw)))
    orig_init = Profiler.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        FakeBackend.net = self.net

    monkeypatch.setattr(Profiler, "__init__", init)
    return FakeBackend


def cfg(tmp_path, **kw):
    base = dict(model="resnet20", input_size=16, out=tmp_path / "t.json", calibrate=4, validate=6, passes=1)
    base.update(kw)
    return ProfileConfig(**base)


def test_block_key_round_trip_and_identical_blocks_measured_once(fake, tmp_path):
    key = BlockKey("conv", 16, 32, 8, 8, 3, 2, 1, False, True, "relu")
    assert BlockKey.from_str(key.to_str()) == key
    with pytest.raises(ValueError):
        BlockKey.from_str(key.to_str().replace("op=conv", "op=warp"))
    table = Profiler(cfg(tmp_path, validate=0), log=lambda m: None, progress=False).run()
    net = DynamicNet.from_name("resnet20", input_size=16)
    keys = all_keys(net)
    per_template = sum(1 for _ in model_blocks(net))
    assert fake.block_calls == len(keys) == len(table.entries)
    assert len(keys) < per_template * 64  # repeated blocks share entries
    assert all(e.source == "measured" for e in table.entries.values())


def test_calibration_fit_and_validation(fake, tmp_path):
    table = Profiler(cfg(tmp_path), log=lambda m: None, progress=False).run()
    net = DynamicNet.from_name("resnet20", input_size=16)
    cal = table.calibration[net.arch_signature()]
    assert cal.scale == pytest.approx(SCALE, rel=1e-6) and cal.offset_ms == pytest.approx(OFFSET, abs=1e-6)
    spec = net.random_spec(123)
    truth = SCALE * sum(fake_ms(k) for k in subnet_keys(net, spec)) + OFFSET
    assert table.predict(net, spec) == pytest.approx(truth, rel=1e-6)
    val = table.validation[net.arch_signature()]
    assert val["k"] == 6 and val["mape"] < 1e-3 and val["within_10pct"] == 100.0
    assert val["spearman_table"] == pytest.approx(1.0)
    reloaded = LatencyTable.load(tmp_path / "t.json")
    assert reloaded.predict(net, spec) == pytest.approx(truth, rel=1e-5)


def test_interpolation_fills_the_grid(fake, tmp_path):
    table = Profiler(cfg(tmp_path, subsample=2, validate=0), log=lambda m: None, progress=False).run()
    sources = [e.source for e in table.entries.values()]
    assert sources.count("interpolated") > 0 and sources.count("measured") > 0
    assert fake.block_calls == sources.count("measured")
    for key, e in table.entries.items():
        assert e.ms == pytest.approx(fake_ms(key), rel=1e-9)  # exact for a bilinear truth
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["counts"]["interpolated"] == sources.count("interpolated")


def test_interrupted_profile_resumes(fake, tmp_path):
    net = DynamicNet.from_name("resnet20", input_size=16)
    n_keys = len(all_keys(net))
    fake.fail_after = n_keys + 40  # in the second of two passes
    with pytest.raises(EdgedynError, match="--resume"):
        Profiler(cfg(tmp_path, validate=0, chunk=16, passes=2), log=lambda m: None, progress=False).run()
    partial = tmp_path / "t.json.partial.json"
    assert partial.is_file() and not (tmp_path / "t.json").exists()
    passes = json.loads(partial.read_text())["block_passes"]
    kept = sum(len(v) for v in passes.values())
    assert n_keys <= kept < n_keys + 40 and len(passes) == n_keys
    fake.fail_after, fake.block_calls = None, 0
    resumed = Profiler(cfg(tmp_path, validate=0, passes=2, resume=True), log=lambda m: None, progress=False).run()
    assert fake.block_calls == 2 * n_keys - kept  # nothing measured twice
    assert not partial.exists()
    assert all(e.n == 2 for e in resumed.entries.values())
    fake.block_calls = 0
    clean = Profiler(cfg(tmp_path, validate=0, passes=2, out=tmp_path / "clean.json"), log=lambda m: None,
                     progress=False).run()
    assert fake.block_calls == 2 * n_keys
    assert resumed.entries.keys() == clean.entries.keys()
    for k, e in clean.entries.items():  # the checkpoint stores ms to 6 decimals (1 ns)
        assert resumed.entries[k].ms == pytest.approx(e.ms, abs=1e-6)


def test_table_errors_name_file_and_field(fake, tmp_path):
    Profiler(cfg(tmp_path, validate=0), log=lambda m: None, progress=False).run()
    good = json.loads((tmp_path / "t.json").read_text())
    bad = tmp_path / "bad.json"
    bad.write_text((tmp_path / "t.json").read_text()[:200])
    with pytest.raises(ArtifactError, match="bad.json: not valid JSON"):
        LatencyTable.load(bad)
    for mutate, pattern in [
        (lambda d: d.update(schema="other/9"), "field 'schema'"),
        (lambda d: d.pop("precision"), "field 'precision' is missing"),
        (lambda d: d.update(batch="one"), "field 'batch' must be int"),
        (lambda d: next(iter(d["entries"].values())).update(ms="fast"), "field 'ms' must be"),
        (lambda d: next(iter(d["entries"].values())).update(source="guess"), "field 'source'"),
    ]:
        d = json.loads(json.dumps(good))
        mutate(d)
        bad.write_text(json.dumps(d))
        with pytest.raises(ArtifactError, match=pattern) as info:
            LatencyTable.load(bad)
        assert "bad.json" in str(info.value) and "\n" not in str(info.value)


def test_table_for_another_device_precision_or_batch(fake, tmp_path):
    table = Profiler(cfg(tmp_path, validate=0), log=lambda m: None, progress=False).run()
    with pytest.raises(ArtifactError, match="field 'precision' is 'fp32', asked for 'fp16'"):
        table.check_matches(precision="fp16")
    with pytest.raises(ArtifactError, match="field 'batch' is 1, asked for 8"):
        table.check_matches(batch=8)
    with pytest.raises(ArtifactError, match="field 'device.kind'"):
        table.check_matches(device="jetson")
    with pytest.raises(ArtifactError, match="field 'device.fingerprint'"):
        table.check_matches(fingerprint="cuda:Some GPU")


def test_model_missing_from_table(fake, tmp_path):
    table = Profiler(cfg(tmp_path, validate=0), log=lambda m: None, progress=False).run()
    other = DynamicNet.from_name("resnet20", input_size=24)  # other input size: other blocks
    with pytest.raises(ArtifactError, match="blocks of model 'resnet20' at input 24 are missing"):
        table.check_model(other)
    with pytest.raises(ArtifactError, match="no entry for block"):
        table.predict(other, other.full_spec())


def test_merge_serves_several_models(fake, tmp_path):
    Profiler(cfg(tmp_path, validate=0), log=lambda m: None, progress=False).run()
    table = Profiler(cfg(tmp_path, validate=0, input_size=24, merge=True), log=lambda m: None,
                     progress=False).run()
    for size in (16, 24):
        table.check_model(DynamicNet.from_name("resnet20", input_size=size))
    assert len(table.calibration) == 2


class PlainFake(FakeBackend):
    """The fake without a thread count to choose (as torch, TensorRT or a GPU backend)."""

    def default_threads(self):
        return None


def test_the_profiler_uses_a_registered_backend_through_its_hooks(tmp_path, monkeypatch):
    from edgedyn.backends import register_backend, registry

    monkeypatch.setattr(registry, "_TARGETS", dict(registry._TARGETS))
    register_backend("plain-fake", PlainFake)
    monkeypatch.setattr(FakeBackend, "net", DynamicNet.from_name("resnet20", input_size=16))
    monkeypatch.setattr(FakeBackend, "block_calls", 0)
    monkeypatch.setattr(FakeBackend, "fail_after", None)
    table = Profiler(cfg(tmp_path, backend="plain-fake", validate=0), log=lambda m: None, progress=False).run()
    assert table.measured and table.backend["name"] == "plain-fake" and table.layout.kind == "plain"
    assert table.backend["threads"] is None and "thread_choice" not in table.backend  # no thread hook: no choice
    assert FakeBackend.block_calls == len(table.entries) > 0
    net = FakeBackend.net
    spec = net.random_spec(3)
    truth = SCALE * sum(fake_ms(k) for k in subnet_keys(net, spec)) + OFFSET
    assert LatencyTable.load(tmp_path / "t.json").predict(net, spec) == pytest.approx(truth, rel=1e-5)


def test_onnxruntime_block_runner_runs_real_blocks():
    from edgedyn.backends import BackendOptions
    from edgedyn.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(BackendOptions(threads=1))
    for key in [BlockKey("conv", 8, 16, 8, 8, 3, 2, 1, False, True, "relu"),
                BlockKey("conv", 8, 8, 8, 8, 3, 1, 1, True, False, "relu6"),
                BlockKey("gap", 8, 8, 4, 4), BlockKey("linear", 8, 10, 1, 1),
                BlockKey("maxpool", 8, 8, 8, 8, 3, 2, 1)]:
        runner = backend.block_runner(key)
        out = runner.infer(runner._x)
        assert out.shape[1] == key.c_out
        assert np.isfinite(runner.time(1, 3)).all()


def test_cli_roofline_table_is_marked_unmeasured(tmp_path):
    out = tmp_path / "orin.json"
    res = CliRunner().invoke(cli, ["profile", "--model", "resnet20", "--device", "jetson", "--backend", "roofline",
                                   "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "NOT measured on hardware" in res.output
    table = LatencyTable.load(out)
    assert table.measured is False and table.sources and table.precision == "fp16"
    net = DynamicNet.from_name("resnet20")
    assert table.predict(net, net.min_spec()) < table.predict(net, net.full_spec())
    # the shipped roofline table was made the same way: the same entries, device and sources
    shipped = json.loads((Path(__file__).resolve().parents[1] / "profiles" / "orin.json").read_text())
    made = json.loads(out.read_text())
    assert made["entries"] and all(shipped["entries"][k] == e for k, e in made["entries"].items())
    assert made["device"] == shipped["device"] and made["sources"] == shipped["sources"]


def test_cli_profile_bad_input(tmp_path):
    res = CliRunner().invoke(cli, ["profile", "--model", "resnet20", "--backend", "roofline", "--device", "jetson",
                                   "--roofline-device", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "nope.json" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.json").exists()
    res = CliRunner().invoke(cli, ["profile", "--model", "resnet20", "--threads", "0", "--out", str(tmp_path / "x.json")])
    assert res.exit_code != 0 and "threads must be >= 1" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.json").exists()


def test_call_overhead_is_measured_and_subtracted(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(FakeBackend, "overhead_runner", lambda self: FakeRunner(0.0005), raising=False)
    table = Profiler(cfg(tmp_path), log=lambda m: None, progress=False).run()
    assert table.call_overhead_ms == pytest.approx(0.0005)
    assert LatencyTable.load(tmp_path / "t.json").call_overhead_ms == pytest.approx(0.0005)
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.random_spec(7)
    keys = subnet_keys(net, spec)
    assert table.raw_sum(net, spec) == pytest.approx(sum(fake_ms(k) - 0.0005 for k in keys))
    truth = SCALE * sum(fake_ms(k) for k in keys) + OFFSET  # every sub-net has the same block count
    assert table.predict(net, spec) == pytest.approx(truth, rel=1e-6)


def test_per_block_corrections_enter_the_prediction_and_survive_a_reload(fake, tmp_path):
    table = Profiler(cfg(tmp_path), log=lambda m: None, progress=False).run()
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.random_spec(7)
    cal = table.calibration[net.arch_signature()]
    assert cal.corrections == {} and cal.prior_rel == 0.0  # 4 sub-nets: too few for corrections
    before = table.predict(net, spec)
    key = subnet_keys(net, spec)[0]
    times = subnet_keys(net, spec).count(key)
    cal.corrections[key] = 0.01
    assert table.predict(net, spec) == pytest.approx(before + SCALE * 0.01 * times, rel=1e-9)
    assert table.raw_sum(net, spec) == pytest.approx(table.features(net, spec, corrected=False)["block_sum"])
    table.save(tmp_path / "c.json")
    reloaded = LatencyTable.load(tmp_path / "c.json")
    assert reloaded.predict(net, spec) == pytest.approx(table.predict(net, spec), rel=1e-5)  # entries: 6 decimals
    obj = json.loads((tmp_path / "c.json").read_text())
    obj["calibration"][net.arch_signature()]["corrections"] = {"op=warp": 0.1}
    (tmp_path / "c.json").write_text(json.dumps(obj))
    with pytest.raises(ArtifactError, match="c.json.*corrections"):
        LatencyTable.load(tmp_path / "c.json")


def test_thread_choice_rule():
    from edgedyn.profile.threads import choose_threads, thread_candidates

    assert thread_candidates(1) == [1]
    assert thread_candidates(2) == [1, 2]
    assert thread_candidates(6) == [1, 2, 4, 6]
    # resnet20-like: 2 threads help nothing on the full net and hurt the small ones -> 1
    assert choose_threads({1: [0.12, 0.24, 0.72], 2: [0.16, 0.32, 0.71]}) == 1
    # resnet18-like: 2 threads halve the full net -> 2
    assert choose_threads({1: [2.6, 9.0, 33.5], 2: [2.7, 5.0, 17.3]}) == 2
    # 4 only 2% better than 2 on average: a tie, and ties go to fewer threads
    assert choose_threads({1: [2.0, 4.0], 2: [1.0, 2.0], 4: [0.98, 1.96]}) == 2
    with pytest.raises(EdgedynError):
        choose_threads({1: [1.0, 2.0], 2: [1.0]})
    with pytest.raises(EdgedynError):
        choose_threads({})


def test_profile_chooses_records_and_keeps_its_thread_count(fake, tmp_path, monkeypatch):
    import edgedyn.backends.onnxruntime as ort_backend

    monkeypatch.setattr(ort_backend, "default_threads", lambda: 4)
    speedup = {1: 1.0, 2: 0.6, 4: 0.59}  # 4 threads tie with 2: fewer threads win
    seen = []

    def prepare(self, module, example, workdir):
        seen.append(self.options.threads)
        mods = dict(module.named_modules())
        spec = SubnetSpec(tuple(mods[g.name].out_channels for g in self.net.groups))
        total = sum(fake_ms(k) for k in subnet_keys(self.net, spec))
        return FakeRunner((SCALE * total + OFFSET) * speedup[self.options.threads or 1])

    monkeypatch.setattr(FakeBackend, "prepare", prepare)
    logs = []
    table = Profiler(cfg(tmp_path, validate=0), log=logs.append, progress=False).run()
    assert seen[:9] == [1, 1, 1, 2, 2, 2, 4, 4, 4]  # three reference sub-nets per count
    assert set(seen[9:]) == {2}  # calibration runs at the chosen count
    assert table.backend["threads"] == 2
    choice = table.backend["thread_choice"]
    assert choice["chosen"] == 2 and set(choice["median_ms"]) == {"1", "2", "4"}
    assert choice["median_ms"]["2"][2] == pytest.approx(0.6 * choice["median_ms"]["1"][2], rel=1e-3)
    assert LatencyTable.load(tmp_path / "t.json").backend["threads"] == 2
    assert any("-> 2" in m for m in logs)
    # each stage says how long it took (the profiling-time figures of docs/machine-states.md)
    assert any(re.fullmatch(r"blocks timed in \d+\.\d s", m) for m in logs), logs
    assert any(re.search(r": built \d+ sub-nets in \d+\.\d s; timing", m) for m in logs), logs
    assert any(re.search(r": timed \d+ sub-nets in \d+\.\d s$", m) for m in logs), logs
    # merging another model into it keeps its count, without timing the counts again
    seen.clear()
    Profiler(cfg(tmp_path, validate=0, input_size=24, merge=True), log=lambda m: None, progress=False).run()
    assert set(seen) == {2}
    # a merge at another count profiles that count in full, as a machine state of its own
    Profiler(cfg(tmp_path, validate=0, input_size=24, merge=True, threads=1), log=lambda m: None,
             progress=False).run()
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.backend["threads"] == 2 and sorted(st.threads for st in table.states.values()) == [1, 2]
    # a resume at another count is still refused, naming the file and the field
    with pytest.raises(ArtifactError, match=r"t\.json: field 'backend\.threads' is 2"):
        Profiler(cfg(tmp_path, validate=0, input_size=24, threads=1, resume=True), log=lambda m: None,
                 progress=False)._set_threads(table, tmp_path / "t.json")


class ScriptedRunner:
    """timed_call() returns the next value of a script (cycling); counts calls."""

    def __init__(self, script):
        self.script, self.calls = list(script), 0

    def timed_call(self):
        v = self.script[self.calls % len(self.script)]
        self.calls += 1
        return v


def test_measure_calls_reports_per_call_percentiles_in_warm_bursts():
    from edgedyn.profile.measure import Calls, measure_calls

    # every 10th call is a 10x stall: the per-call median ignores it, p99 sees it
    r = ScriptedRunner([1.0] * 9 + [10.0])
    (st,) = measure_calls([r], Calls(calls=100, burst=10, warmup=5))
    assert st.n == 100 and st.median == 1.0 and st.p99 == 10.0
    assert r.calls == 5 + 100 + 10  # warm-up, timed, one untimed call before each burst of 10
    # target_ms: a slow runner gets fewer calls (not below min_calls), a fast one the most
    slow, fast = ScriptedRunner([50.0]), ScriptedRunner([0.5])
    a, b = measure_calls([slow, fast], Calls(calls=200, target_ms=1000.0, min_calls=30))
    assert a.n == 30 and b.n == 200 and a.median == 50.0 and b.median == 0.5


def test_measure_calls_visits_each_runner_at_least_min_visits_times():
    from edgedyn.profile.measure import CALIBRATION, Calls, measure_calls

    runners = [ScriptedRunner([20.0]), ScriptedRunner([20.0]), ScriptedRunner([0.5])]
    stats = measure_calls(runners, Calls(calls=200, target_ms=300.0, min_calls=15, warmup=3, min_visits=5))
    assert [st.n for st in stats] == [15, 15, 200]
    # warm-up, timed calls, and one untimed call before each burst: 15 calls come in 5 bursts
    # of 3, the fast runner's 200 keep bursts of 10
    assert [r.calls for r in runners] == [3 + 15 + 5, 3 + 15 + 5, 3 + 200 + 20]
    assert CALIBRATION.min_visits >= 5 and CALIBRATION.min_calls >= 15


def test_thorough_profile_times_longer_per_block_and_per_sub_net(monkeypatch, tmp_path):
    from edgedyn.profile import block_timing, profiler
    from edgedyn.profile.measure import BLOCKS, BLOCKS_THOROUGH, CALIBRATION, CALIBRATION_THOROUGH

    assert BLOCKS_THOROUGH.min_reps > BLOCKS.min_reps and BLOCKS_THOROUGH.target_ms > BLOCKS.target_ms
    assert CALIBRATION_THOROUGH.target_ms > CALIBRATION.target_ms
    seen: dict[str, set] = {"blocks": set(), "whole": set()}
    real_interleaved, real_calls = block_timing.measure_interleaved, profiler.measure_calls

    def spy_interleaved(runners, protocol, seed=0):
        seen["blocks"].add(protocol.target_ms)
        return real_interleaved(runners, protocol, seed)

    def spy_calls(runners, protocol, seed=0):
        seen["whole"].add(protocol)
        return real_calls(runners, protocol, seed)

    monkeypatch.setattr(block_timing, "measure_interleaved", spy_interleaved)
    monkeypatch.setattr(profiler, "measure_calls", spy_calls)
    for thorough in (False, True):
        seen["blocks"].clear()
        seen["whole"].clear()
        cfg = ProfileConfig(model="resnet20", input_size=8, out=tmp_path / f"t{thorough}.json", calibrate=2,
                            passes=2, threads=1, probes=0, thorough=thorough)
        table = Profiler(cfg.resolved(), log=lambda m: None, progress=False).run()
        base = BLOCKS_THOROUGH if thorough else BLOCKS
        assert seen["blocks"] == {base.target_ms / 2}
        assert seen["whole"] == {CALIBRATION_THOROUGH if thorough else CALIBRATION}
        assert table.backend["profile_protocol"] == ("thorough" if thorough else "default")


def test_bounded_map_keeps_order_and_bounds_what_is_in_flight():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from edgedyn.export import _bounded_map

    lock, live, peak = threading.Lock(), [0], [0]

    def work(x):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            return x * x
        finally:
            with lock:
                live[0] -= 1

    submitted = []

    def items():
        for i in range(50):
            submitted.append(i)
            yield i

    with ThreadPoolExecutor(4) as pool:
        out = []
        for i, y in enumerate(_bounded_map(pool, work, items(), in_flight=3)):
            out.append(y)
            assert len(submitted) <= i + 1 + 3  # lazily consumed: never more than 3 ahead
    assert out == [i * i for i in range(50)] and peak[0] <= 3


def test_refit_rederives_a_table_from_its_own_timings_and_refuses_bad_ones(fake, tmp_path):
    table = Profiler(cfg(tmp_path), log=lambda m: None, progress=False).run()
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.random_spec(11)
    good = table.predict(net, spec)
    path = tmp_path / "t.json"
    obj = json.loads(path.read_text())
    sig = net.arch_signature()
    obj["calibration"][sig].update(coef={"block_sum": 3.0}, offset_ms=1.0)  # a stale fit
    obj["validation"][sig]["mape"] = 99.0
    path.write_text(json.dumps(obj))
    calls = fake.block_calls
    args = ["profile", "--model", "resnet20", "--input-size", "16", "--out", str(path), "--refit"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert fake.block_calls == calls  # nothing measured
    refit = LatencyTable.load(path)
    assert refit.predict(net, spec) == pytest.approx(good, rel=1e-4)  # the stored timings give the fit back
    assert refit.validation[sig]["mape"] < 1e-2 and "refit" in refit.backend

    obj = json.loads(path.read_text())
    obj["calibration"][sig]["points"][2]["measured_ms"] = -1
    path.write_text(json.dumps(obj))
    before = path.read_text()
    res = CliRunner().invoke(cli, args)
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert "t.json" in res.output and "calibration.points[2].measured_ms" in res.output
    assert path.read_text() == before  # nothing written
    res = CliRunner().invoke(cli, args[:4] + ["24", "--out", str(path), "--refit"])  # a model it does not hold
    assert res.exit_code != 0 and "field 'calibration'" in res.output and "resnet20@16" in res.output
    res = CliRunner().invoke(cli, args + ["--merge"])
    assert res.exit_code == 2 and "--refit" in res.output
    res = CliRunner().invoke(cli, args[:-3] + ["--out", str(tmp_path / "none.json"), "--refit"])
    assert res.exit_code == 2 and "none.json" in res.output


# -- the shipped tables predict exactly as they did before the blocks/backends reshape ----
GOLDEN_TABLES = Path(__file__).resolve().parent / "golden" / "tables" / "predictions.json"
SHIPPED = [("cpu-resnet20.json", "resnet20", 32), ("cpu-resnet18.json", "resnet18", 224),
           ("orin.json", "resnet20", 32), ("orin.json", "resnet18", 224)]


def shipped_predictions() -> dict[str, dict[str, list[float]]]:
    """Per shipped table and model: predict, raw_sum and the key count of fixed specs (min,
    full, three uniform, five random); recorded in ``GOLDEN_TABLES`` before the reshape."""
    root = Path(__file__).resolve().parents[1] / "profiles"
    out = {}
    for name, model, size in SHIPPED:
        table = LatencyTable.load(root / name)
        net = DynamicNet.from_name(model, input_size=size)
        specs = [net.min_spec(), net.full_spec()] + [net.uniform_spec(r) for r in (0.25, 0.5, 0.75)]
        specs += [net.random_spec(seed) for seed in range(5)]
        out[f"{name}:{model}@{size}"] = {
            "predict": [table.predict(net, s) for s in specs],
            "raw_sum": [table.raw_sum(net, s) for s in specs],
            "keys": [len(table.keys(net, s)) for s in specs]}
    return out


def test_shipped_tables_predict_exactly_as_recorded():
    want = json.loads(GOLDEN_TABLES.read_text())
    got = json.loads(json.dumps(shipped_predictions()))  # floats through JSON: repr round-trips exactly
    assert got.keys() == want.keys()
    for k in want:
        assert got[k] == want[k], k
