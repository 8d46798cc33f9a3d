"""edgedyn.deploy: run dir -> bundle (ONNX Runtime fp32/int8; TensorRT 10/11 with the strict stand-in)."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import edgedyn.export as export_mod
from edgedyn.artifacts import atomic_write_json
from edgedyn.backends.base import BackendOptions
from edgedyn.backends.onnxruntime import OrtRunner
from edgedyn.deploy import BUNDLE_SCHEMA, Manifest, deploy, load_run, verify_files
from edgedyn.deploy import build as build_mod
from edgedyn.device import device_fingerprint, device_info
from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.profile import LatencyTable

RATIOS = (0.25, 0.5, 1.0)
_EXPORTS: dict[str, bytes] = {}
# keep_dominated: untrained test nets tie and cross at random; the filter has its own tests
FAST = {"measure_iters": 15, "test_limit": 48, "check_samples": 4, "calib_limit": 24, "keep_dominated": True}


def make_run_dir(path: Path, ratios=RATIOS, seed: int = 0) -> Path:
    """A search run dir as edgedyn.search writes it: weights.pt with per-sub-net BN stats + subnets.json."""
    from helpers import settle_bn

    torch.manual_seed(seed)
    net = settle_bn(DynamicNet.from_name("resnet20", num_classes=10, input_size=32), 32, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [torch.randn(16, 3, 32, 32, generator=gen) for _ in range(2)]
    subnets = []
    for i, r in enumerate(ratios):
        spec = net.uniform_spec(r)
        net.calibrate_bn(spec, batches)
        subnets.append({"budget": {"text": str(r), "value": r, "unit": "fraction"}, "widths": list(spec.widths),
                        "cost": net.macs(spec) / 1e6, "macs": net.macs(spec), "params": net.params(spec),
                        "holdout_accuracy": 0.5 + 0.1 * i, "test_accuracy": 0.5 + 0.1 * i})
    path.mkdir(parents=True, exist_ok=True)
    net.save(path / "weights.pt")
    atomic_write_json(path / "subnets.json", {
        "schema": "edgedyn.search_result/1",
        "config": {"model": "resnet20", "data": "digits", "seed": 0, "holdout_fraction": 0.1, "data_limit": None},
        "net": net.config(), "signature": net.signature(),
        "cost": {"name": "flops", "unit": "MMAC", "full": net.macs(net.full_spec()) / 1e6},
        "table": {"path": None, "measured": None}, "subnets": subnets})
    return path


def _cached_export(real):
    """torch's exporter takes seconds per sub-net on 2 shared cores; export each distinct model once."""

    def export(module, example, path, *args, **kwargs):
        h = hashlib.sha256()
        for k, v in module.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().numpy().tobytes())
        key = h.hexdigest()
        if key not in _EXPORTS:
            _EXPORTS[key] = Path(real(module, example, path, *args, **kwargs)).read_bytes()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(_EXPORTS[key])
        return Path(path)

    return export


def _cached_splits(real):
    """Loading digits (resize and normalise) takes seconds; load each data setting once per session."""
    cache: dict = {}

    def load(run):
        key = tuple(sorted(run.data.items()))
        if key not in cache:
            cache[key] = real(run)
        return cache[key]

    return load


@pytest.fixture(scope="session")
def fast_export():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_mod, "export_onnx", _cached_export(export_mod.export_onnx))
        mp.setattr(build_mod, "_load_splits", _cached_splits(build_mod._load_splits))
        yield


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory, fast_export) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def fp32_bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "fp32"
    deploy(run_dir, out=out, threads=1, **FAST)
    return out


@pytest.fixture(scope="module")
def int8_bundle(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "int8"
    deploy(run_dir, precision="int8", calib="calib/digits_32.npy", out=out, threads=1, **FAST)
    return out


@functools.lru_cache(maxsize=1)
def digits_test():
    from edgedyn.data import load_data

    return load_data("digits", 32, seed=0).test


def _test_inputs(n: int = 6) -> np.ndarray:
    test = digits_test()
    return np.stack([test[i][0].numpy() for i in range(n)]).astype(np.float32)


# -- fp32 -------------------------------------------------------------------------------
def test_fp32_bundle_matches_pytorch(fp32_bundle: Path, run_dir: Path) -> None:
    m = Manifest.load(fp32_bundle)
    run = load_run(run_dir)
    x = _test_inputs()
    assert len(m.subnets) == len(RATIOS)
    for rec, sub in zip(m.subnets, run.subnets):
        assert rec.spec == sub.spec
        model = run.net.extract(sub.spec)
        runner = OrtRunner(str(fp32_bundle / rec.model_file), BackendOptions(threads=1))
        for i in range(len(x)):
            ref = model(torch.from_numpy(x[i:i + 1])).detach().numpy()
            assert np.max(np.abs(runner.infer(x[i:i + 1]) - ref)) <= 1e-4
        assert rec.accuracy["max_abs_diff"] <= 1e-4 and rec.accuracy["agreement"] == 1.0
        assert rec.accuracy["test"] == pytest.approx(rec.accuracy["test_fp32"])


def test_manifest_records_device_backend_files_and_latency(fp32_bundle: Path) -> None:
    doc = json.loads((fp32_bundle / "manifest.json").read_text())
    assert doc["schema"] == BUNDLE_SCHEMA
    assert doc["fingerprint"] == device_fingerprint(device_info("cpu"))
    assert doc["backend"]["name"] == "onnxruntime" and doc["backend"]["version"]
    assert doc["precision"] == "fp32" and doc["threads"] == 1
    if Path("/proc/stat").is_file():  # how busy other work kept the CPUs right before the timing
        assert 0.0 <= doc["device"]["cpu_busy_before_measure"] <= 1.0
    assert doc["input"] == {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32"}
    for s in doc["subnets"]:
        for rec in s["files"].values():
            data = (fp32_bundle / rec["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == rec["sha256"] and rec["bytes"] == len(data)
        meas = s["measured"]
        assert 0 < meas["median"] <= meas["p90"] <= meas["p99"] and meas["n"] == FAST["measure_iters"]
        assert s["predicted_ms"] is None  # the run's cost is MMAC and no table was given
        assert s["macs"] > 0 and s["params"] > 0
    macs = [s["macs"] for s in doc["subnets"]]
    assert macs == sorted(macs)
    assert not list(fp32_bundle.parent.glob(".fp32.*"))  # no temp dir left


def test_predictions_come_from_a_table_for_this_device_and_thread_count(run_dir: Path, tmp_path: Path,
                                                                        caplog, monkeypatch) -> None:
    """Deploy serves with the table's thread count by default; a table timed with other
    threads or on another device predicts nothing (a warning says why)."""
    import edgedyn.backends.onnxruntime as ort_backend

    doc = json.loads(Path("profiles/cpu-resnet20.json").read_text())
    # this device's ONNX Runtime runs the table's layout (it was profiled with AVX-512's 16-channel
    # blocks; an AVX2 CPU runs 8): the plumbing is what is tested, whatever this CPU is
    monkeypatch.setattr(ort_backend, "nchwc_block", lambda threads=None: doc["layout"]["block"])
    doc["device"]["fingerprint"] = device_fingerprint(device_info("cpu"))
    doc["backend"]["threads"] = 1
    table = tmp_path / "table.json"
    table.write_text(json.dumps(doc))
    m = deploy(run_dir, out=tmp_path / "b1", table=table, **FAST)
    assert m.threads == 1 and m.table == str(table)
    assert all(s.predicted_ms and s.predicted_ms > 0 for s in m.subnets)
    # re-checked before its check: probes timed beside the sub-nets, both errors recorded
    rc = m.checks["recheck"]
    assert rc["probes"] == 8 and rc["correction"]["form"] in ("scale", "scale+offset", "quadratic")
    assert set(m.checks["prediction_error_raw"]) == set(m.checks["prediction_error"]) == {
        str(s.index) for s in m.subnets}
    if rc["trusted"]:
        for i, e in m.checks["prediction_error"].items():
            fixed = rc["predicted_ms"][i]
            assert e == pytest.approx(m.subnets[int(i)].measured["median"] / fixed - 1, abs=1e-3)
    assert m.states == {}  # a table without machine states
    # a table holding a second machine state: the manifest records each sub-net's latency there
    from edgedyn.profile.recheck import recheck

    other = {"kind": "cpu", "cpu_model": "a throttled state", "threads": 1}
    recheck(table, tmp_path / "two.json", model="resnet20", state_key=other, log=lambda msg: None,
            measure=lambda be, net, specs: [2.0 * LatencyTable.load(table).raw_predict(net, s) for s in specs])
    m = deploy(run_dir, out=tmp_path / "b5", table=tmp_path / "two.json", **FAST)
    by_id = m.states["by_id"]
    assert len(by_id) == 2 and m.states["deployed"] in by_id
    moved = next(v for k, v in by_id.items() if k != m.states["deployed"])
    assert moved["scale"] == pytest.approx([2.0] * len(m.subnets), rel=1e-3)
    m = deploy(run_dir, out=tmp_path / "b2", table=table, threads=2, **FAST)
    assert m.threads == 2 and m.table is None and all(s.predicted_ms is None for s in m.subnets)
    assert "profiled with 1 CPU threads, this bundle serves with 2" in caplog.text
    # an fp32 table predicts no int8 latencies, but its thread count was chosen for this model here
    m = deploy(run_dir, out=tmp_path / "b4", table=table, precision="int8", calib="calib/digits_32.npy", **FAST)
    assert m.threads == 1 and m.table is None and all(s.predicted_ms is None for s in m.subnets)
    assert "a onnxruntime fp32 table does not predict onnxruntime int8" in caplog.text
    # a CPU of the same name with another instruction set: ONNX Runtime blocks channels by 8, not 16
    monkeypatch.setattr(ort_backend, "nchwc_block", lambda threads=None: 8)
    m = deploy(run_dir, out=tmp_path / "b6", table=table, **FAST)
    assert m.table is None and all(s.predicted_ms is None for s in m.subnets)
    assert "field 'layout' is 'nchwc16', the backend runs 'nchwc8' on this device" in caplog.text
    doc["device"]["fingerprint"] = "cpu:another CPU"
    table.write_text(json.dumps(doc))
    m = deploy(run_dir, out=tmp_path / "b3", table=table, **FAST)
    assert m.table is None and all(s.predicted_ms is None for s in m.subnets)
    assert "field 'device.fingerprint' is 'cpu:another CPU'" in caplog.text


def test_manifest_round_trip_and_schema_errors(fp32_bundle: Path, tmp_path: Path) -> None:
    m = Manifest.load(fp32_bundle)
    copy = tmp_path / "manifest.json"
    m2 = Manifest.from_dict(m.to_dict(), copy)
    m2.save(copy)
    assert json.loads(copy.read_text()) == json.loads((fp32_bundle / "manifest.json").read_text())
    verify_files(m)

    def broken(edit) -> str:
        doc = json.loads((fp32_bundle / "manifest.json").read_text())
        edit(doc)
        p = tmp_path / "bad" / "manifest.json"
        p.parent.mkdir(exist_ok=True)
        p.write_text(json.dumps(doc))
        with pytest.raises(ArtifactError) as err:
            Manifest.load(p.parent)
        assert "\n" not in str(err.value) and str(p) in str(err.value)
        return str(err.value)

    assert "field 'schema'" in broken(lambda d: d.update(schema="edgedyn.bundle/0"))
    assert "field 'subnets'" in broken(lambda d: d.pop("subnets"))
    assert "input.shape" in broken(lambda d: d["input"].update(shape=[1, -3]))
    assert "field 'sha256'" in broken(lambda d: d["subnets"][0]["files"]["model"].pop("sha256"))
    assert "must be relative" in broken(lambda d: d["subnets"][1]["files"]["model"].update(path="/etc/passwd"))
    assert "measured: field 'p99'" in broken(lambda d: d["subnets"][0]["measured"].pop("p99"))
    with pytest.raises(ArtifactError, match="file not found"):
        Manifest.load(tmp_path / "nothing")


# -- int8 -------------------------------------------------------------------------------
def test_int8_bundle_is_symmetric_qdq_and_agrees(int8_bundle: Path) -> None:
    from edgedyn.backends.tensorrt import check_qdq
    from edgedyn.device import int8_saturates

    m = Manifest.load(int8_bundle)
    assert m.precision == "int8" and m.calibration["samples"] == FAST["calib_limit"]
    # 7-bit weights where this CPU's 8-bit kernels saturate (AVX2 without VNNI: agreement fell to 0.67)
    assert m.calibration["weight_bits"] == (7 if int8_saturates() else 8)
    assert "calib_cache" in m.files and (int8_bundle / "calib_cache.json").is_file()
    for rec in m.subnets:
        qdq = int8_bundle / rec.files["qdq"]["path"]
        ops = {n.op_type for n in onnx.load(str(qdq)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        check_qdq(qdq)  # symmetric int8, float bias: what TensorRT builds
        assert (int8_bundle / rec.files["calib_ranges"]["path"]).is_file()
        acc = rec.accuracy
        assert acc["agreement"] >= 0.9, acc
        assert acc["delta"] == pytest.approx(acc["test"] - acc["test_fp32"])
        assert rec.measured["median"] > 0


def test_int8_redeploy_reuses_calibration_ranges(int8_bundle: Path, run_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in (int8_bundle / "calib").iterdir()}
    deploy(run_dir, precision="int8", calib="calib/digits_32.npy", out=int8_bundle, threads=1, **FAST)
    cache = json.loads((int8_bundle / "calib_cache.json").read_text())
    assert all(e["reused"] for e in cache["subnets"].values())
    after = {p.name: p.read_bytes() for p in (int8_bundle / "calib").iterdir()}
    assert set(after) == set(before)
    verify_files(Manifest.load(int8_bundle))


# -- errors and atomicity ------------------------------------------------------------------
def test_unsupported_precision_and_backend(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(EdgedynError, match="precision 'fp16' is not supported by backend 'onnxruntime'"):
        deploy(run_dir, precision="fp16", out=tmp_path / "b")
    with pytest.raises(EdgedynError, match="backend 'torch' cannot deploy"):
        deploy(run_dir, backend="torch", out=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_load_run_errors(run_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "run"
    shutil.copytree(run_dir, bad)
    doc = json.loads((bad / "subnets.json").read_text())
    doc["signature"] = "0" * 16
    (bad / "subnets.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match="field 'signature'"):
        load_run(bad)
    doc = json.loads((run_dir / "subnets.json").read_text())
    doc["subnets"][0]["widths"] = [3] * len(doc["subnets"][0]["widths"])
    (bad / "subnets.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactError, match=r"subnets\[0\]"):
        load_run(bad)
    (bad / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match="weights file not found"):
        load_run(bad)


def test_failed_deploy_keeps_the_old_bundle(run_dir: Path, fp32_bundle: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, out)
    before = (out / "manifest.json").read_bytes()
    real = export_mod.export_onnx
    calls = []

    def flaky(module, example, path, *a, **k):  # the second sub-net's export fails
        calls.append(path)
        if len(calls) == 2:
            raise EdgedynError("export exploded")
        return real(module, example, path, *a, **k)

    monkeypatch.setattr(export_mod, "export_onnx", flaky)
    with pytest.raises(EdgedynError, match="export exploded"):
        deploy(run_dir, out=out, threads=1, **FAST)
    assert (out / "manifest.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # temp dir removed


def test_export_mismatch_is_one_line(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = export_mod.export_onnx

    def perturbed(module, example, path, *a, **k):
        with torch.no_grad():
            next(module.parameters()).add_(0.5)
        out = real(module, example, path, *a, **k)
        with torch.no_grad():
            next(module.parameters()).sub_(0.5)
        return out

    monkeypatch.setattr(export_mod, "export_onnx", perturbed)
    with pytest.raises(EdgedynError, match=r"sub-net 0 \[.*\]: exported ONNX differs from PyTorch by .* \(max abs, > [0-9.e-]+: 0\.0001 x the outputs' scale") as err:
        deploy(run_dir, out=tmp_path / "b", **FAST)
    assert "\n" not in str(err.value)


def test_fp32_tolerance_grows_with_the_outputs_scale() -> None:
    from edgedyn.deploy.check import FP32_TOLERANCE, max_abs_diff

    small = np.array([[0.5, -0.2]])
    assert max_abs_diff(small + 0.9e-4, small, "x") == pytest.approx(0.9e-4)
    with pytest.raises(EdgedynError, match=r"x differs from PyTorch by 1\.10e-04 \(max abs, > 0\.0001"):
        max_abs_diff(small + 1.1e-4, small, "x")
    large = np.array([[20.0, -3.0]])  # logits of 20: fp32 rounding of that size is 20x larger
    assert max_abs_diff(large + 1.5e-3, large, "x") == pytest.approx(1.5e-3)
    with pytest.raises(EdgedynError, match=r"> 0\.002: 0\.0001 x the outputs' scale, max\(1, 20\)"):
        max_abs_diff(large + 2.5e-3, large, "x")
    assert FP32_TOLERANCE == 1e-4


# -- TensorRT (strict stand-in) ---------------------------------------------------------------
def _install_trt(monkeypatch: pytest.MonkeyPatch, version: str):
    import edgedyn.backends.tensorrt as trt_backend

    try:
        from standins.tensorrt_standin import make_standin
    except ImportError:  # pragma: no cover
        from tests.standins.tensorrt_standin import make_standin
    trt = make_standin(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_backend, "cuda_available", lambda: True)  # builds need a GPU; torch stays CPU
    monkeypatch.setattr(build_mod, "_device_info", lambda backend: {"kind": "cuda", "name": "Stand-in GPU"})
    return trt


@pytest.mark.parametrize("version,precision", [("10.3.0", "fp16"), ("11.0.0", "int8")])
def test_tensorrt_deploy_builds_engines_with_shared_timing_cache(run_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 version: str, precision: str) -> None:
    from edgedyn.runtime import Selector

    try:
        from standins.tensorrt_standin import calls, engine_info
    except ImportError:  # pragma: no cover
        from tests.standins.tensorrt_standin import calls, engine_info
    trt = _install_trt(monkeypatch, version)
    out = tmp_path / f"trt{version}"
    m = deploy(run_dir, backend="tensorrt", precision=precision, out=out, **FAST)
    assert m.backend == {"name": "tensorrt", "version": version} and m.precision == precision
    assert m.fingerprint == "cuda:Stand-in GPU" and m.threads is None
    log = calls(trt)
    assert len(log.builds) == len(RATIOS)
    assert log.timing_cache_inputs[0] == 0 and all(n > 0 for n in log.timing_cache_inputs[1:])  # one cache, reused
    assert "timing_cache" in m.files and (out / "timing.cache").is_file()
    for rec in m.subnets:
        engine = out / rec.model_file
        assert engine.suffix == ".engine" and engine_info(engine.read_bytes())["precision"] == precision
        assert rec.measured is None and rec.accuracy["test"] is None  # not executed without CUDA
        assert rec.accuracy["max_abs_diff_onnx"] <= 1e-4
        if precision == "int8":  # the QDQ graph the engine was built from, run on ONNX Runtime
            assert rec.accuracy["qdq_onnxruntime_agreement"] >= 0.9
    assert m.notes and "not executed" in m.notes[0]
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["backend"]["name"] == "tensorrt"
    # the selector verifies and loads every engine once onto one shared activation buffer
    sel = Selector.load(out, "fixed", allow_other_device=True, trt_memory_device="cpu")
    assert sel.shared_memory.size == max(r.device_memory_size for r in sel.runners)
    assert calls(trt).contexts[-len(RATIOS):] == ["USER_MANAGED"] * len(RATIOS)
    with pytest.raises(EdgedynError, match="field 'backend.name' is 'tensorrt'"):
        Selector.load(out, backend="onnxruntime", allow_other_device=True)
    with pytest.raises(EdgedynError, match="no cuda device|fingerprint"):
        Selector.load(out)


def test_cli_deploy(run_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgedyn.cli import _Group
    from edgedyn.deploy.cli_cmd import deploy as deploy_cmd

    group = _Group(name="edgedyn", commands={"deploy": deploy_cmd})
    out = tmp_path / "bundle"
    res = CliRunner().invoke(group, ["deploy", "--run", str(run_dir), "--out", str(out), "--threads", "1",
                                     "--measure-iters", "5", "--keep-dominated"])
    assert res.exit_code == 0, res.output
    assert "p99 ms" in res.output and "latency rises with size:" in res.output
    rows = [ln.split()[0] for ln in res.output.splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert rows == [str(i) for i in range(len(RATIOS))]
    verify_files(Manifest.load(out))
    res = CliRunner().invoke(group, ["deploy", "--run", str(tmp_path / "nope"), "--out", str(out)])
    assert res.exit_code == 2 and res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_deploy_checks_flag_prediction_error_and_non_rising_subnets() -> None:
    from edgedyn.bundle import SubnetRecord
    from edgedyn.deploy.check import deploy_checks
    from edgedyn.dynamic import SubnetSpec

    def rec(i, macs, pred, med, acc):
        return SubnetRecord(index=i, spec=SubnetSpec((i + 1,)), files={}, macs=macs, params=1, predicted_ms=pred,
                            measured={"median": med, "p90": med, "p99": med}, accuracy={"test": acc})

    good = deploy_checks([rec(0, 10, 1.0, 1.05, 0.8), rec(1, 20, 2.0, 1.9, 0.9)])
    assert good["prediction_within_10pct"] and good["latency_rising"] and good["accuracy_rising"]
    assert good["problems"] == [] and good["prediction_error"] == {"0": 0.05, "1": -0.05}
    bad = deploy_checks([rec(0, 10, 1.0, 1.3, 0.9), rec(1, 20, 2.0, 1.2, 0.9)])
    assert not bad["prediction_within_10pct"] and not bad["latency_rising"] and not bad["accuracy_rising"]
    assert len(bad["problems"]) == 4 and "+30.0% off" in bad["problems"][0]


def test_duplicate_picks_deploy_once(tmp_path: Path, fast_export) -> None:
    run = make_run_dir(tmp_path / "run", ratios=(0.5, 0.5, 1.0))
    m = deploy(run, out=tmp_path / "b", **FAST)
    assert len(m.subnets) == 2
    assert [b["text"] for b in m.subnets[0].budgets] == ["0.5", "0.5"] and m.subnets[0].budget["text"] == "0.5"
    assert {r.index for r in m.subnets} == {0, 1}
    reloaded = Manifest.load(tmp_path / "b")
    assert len(reloaded.subnets[0].budgets) == 2 and "latency_rising" in reloaded.checks


def test_dominated_picks_are_served_by_the_cheaper_pick() -> None:
    from types import SimpleNamespace

    from edgedyn.deploy.evaluation import dominated

    picks = [SimpleNamespace(index=i, macs=m) for i, m in enumerate((10, 20, 30, 40, 50))]
    acc = {0: 0.6, 1: 0.7, 2: 0.7, 3: 0.65, 4: 0.8}
    assert dominated(picks, acc) == {2: 1, 3: 1}  # a tie at a higher cost, and a drop
    assert dominated(picks, {i: 0.1 * i for i in range(5)}) == {}


def test_deploy_keeps_only_picks_that_beat_every_cheaper_one(tmp_path: Path, fast_export) -> None:
    run = make_run_dir(tmp_path / "run", ratios=(0.25, 0.5, 0.75, 1.0))
    fast = {k: v for k, v in FAST.items() if k != "keep_dominated"}
    m = deploy(run, out=tmp_path / "b", **fast)  # untrained weights: which picks win is up to chance
    acc = [r.accuracy["test_fp32"] for r in m.subnets]
    assert [r.macs for r in m.subnets] == sorted(r.macs for r in m.subnets)
    assert all(a < b for a, b in zip(acc, acc[1:]))  # every kept pick beats the cheaper ones
    served = sum(len(r.budgets) for r in m.subnets)
    left_out = [n for n in m.notes if "left out" in n]
    assert served == 4 and len(m.subnets) + len(left_out) == 4
    kept = deploy(run, out=tmp_path / "all", **{**fast, "keep_dominated": True})
    assert len(kept.subnets) == 4 and not any("left out" in n for n in kept.notes)


# -- issue 23: one deploy at a time, --out checked, an atomic swap that survives SIGKILL -------------
FAKE_BUILD = """
import datetime, os, shutil, sys
from pathlib import Path
import edgedyn.deploy.build as build_mod
from edgedyn.bundle import Manifest

def fake_build(run, be, job, out, tmp, prediction, bar=None):
    # the real stages' output, copied from a template bundle: the swap is what is tested here
    template = Manifest.load(os.environ["TEMPLATE"])
    for _, rec in template.all_files():
        shutil.copyfile(template.root / rec["path"], tmp / rec["path"])
    template.created = datetime.datetime.now(datetime.timezone.utc).isoformat()
    template.notes = [f"deployed by pid {os.getpid()}"]
    return template

build_mod._build = fake_build
build_mod.deploy(sys.argv[1], out=sys.argv[2], threads=1, progress=False)
"""


def _deploy_killed_at(stage: str, run: Path, out: Path, template: Path) -> None:
    import os
    import subprocess

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1",
           "EDGEDYN_FAULT_STAGE": stage, "TEMPLATE": str(template)}
    proc = subprocess.run([sys.executable, "-c", FAKE_BUILD, str(run), str(out)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == -9, (stage, proc.stderr[-2000:])  # SIGKILLed at the stage, nowhere else


def _loads(out: Path) -> bytes:
    """The manifest of the bundle at ``out``, after checking it is whole (every file's sha256)."""
    from edgedyn.runtime import Selector

    verify_files(Manifest.load(out))
    Selector.load(out).close()
    return (out / "manifest.json").read_bytes()


@pytest.mark.timeout(600)
def test_deploy_killed_at_every_stage_leaves_the_old_or_the_new_bundle(fp32_bundle: Path, run_dir: Path,
                                                                        tmp_path: Path) -> None:
    from edgedyn.deploy.outdir import STAGES

    out = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, out)  # a plain folder, as older edgedyn versions wrote bundles
    old = _loads(out)
    # the old layout: killed before the swap it is intact; killed after, the new one is in place
    for stage in ("linked", "swapped"):
        _deploy_killed_at(stage, run_dir, out, fp32_bundle)
        now = _loads(out)
        assert (now == old) == (stage == "linked"), stage
        old = now
    assert out.is_symlink() and (tmp_path / "bundle.d").is_dir()
    for stage in STAGES:  # the new layout
        _deploy_killed_at(stage, run_dir, out, fp32_bundle)
        now = _loads(out)
        assert (now == old) == (stage != "swapped"), stage
        old = now
    m = deploy(run_dir, out=out, threads=1, **FAST)  # the next deploy succeeds and tidies up
    assert _loads(out) != old and m.path == out / "manifest.json"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["bundle", "bundle.d"], left  # no link, lock or build folder left behind
    inside = sorted(p.name for p in (tmp_path / "bundle.d").iterdir())
    assert len(inside) == 2 and all(n.startswith("v-") for n in inside), inside  # the new and the replaced


def test_a_second_deploy_to_the_same_out_is_refused_at_once(run_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from click.testing import CliRunner

    from edgedyn.cli import cli
    from edgedyn.locks import exclusive_lock

    def no_build(*a, **k):
        raise AssertionError("the second deploy built")

    monkeypatch.setattr(build_mod, "_build", no_build)
    out = tmp_path / "bundle"
    with exclusive_lock(out, "bundle"):  # the first deploy, still running
        with pytest.raises(EdgedynError, match=rf"another edgedyn process \(pid {os.getpid()}\) is writing this "
                                               "bundle") as info:
            deploy(run_dir, out=out, threads=1, **FAST)
        assert "\n" not in str(info.value)
        res = CliRunner().invoke(cli, ["deploy", "--run", str(run_dir), "--out", str(out), "--threads", "1"])
        assert res.exit_code == 2 and res.output.count("error: ") == 1 and "is writing this bundle" in res.output
    assert not out.exists()


@pytest.mark.parametrize("out", [".", "..", "sub/..", ""])
def test_deploy_out_dot_is_refused_in_one_line(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              out: str) -> None:
    from click.testing import CliRunner

    from edgedyn.cli import cli

    here = tmp_path / "work"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here)
    monkeypatch.setattr(build_mod, "_build", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(EdgedynError, match="current directory") as info:
        deploy(run_dir, out=out, threads=1, **FAST)
    assert "\n" not in str(info.value)
    res = CliRunner().invoke(cli, ["deploy", "--run", str(run_dir), "--out", out or ".", "--threads", "1"])
    assert res.exit_code == 2 and res.output.count("error: ") == 1 and "current directory" in res.output
    assert sorted(p.name for p in here.iterdir()) == ["sub"]
