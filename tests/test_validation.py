"""Issue 12, part 1: non-finite and impossible numbers are refused, in artifacts, on the
command line and in the Python API, with one line naming the file (or option) and field.

Every test here failed on the code before the validation layer (edgedyn/validate.py,
edgedyn/cli_types.py): the artifacts loaded, the commands ran (or hung), the API raised
a bare TypeError. The builders below (a small latency table, a search run, a deployed
bundle) are made once per session and shared with tests/test_fuzz.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgedyn.artifacts import atomic_write_json
from edgedyn.cli import cli
from edgedyn.deploy import Manifest
from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.profile import LatencyTable
from edgedyn.runtime import Selector
from edgedyn.runtime.serve import load_schedule, make_budget, serve
from edgedyn.validate import NumberError, validate_search_result

SHAPE = (1, 3, 32, 32)
X = np.zeros(SHAPE, np.float32)
_BUILT: dict[str, Path] = {}


# -- shared builders (once per session; test_fuzz imports them) ------------------------------
def small_table(factory: pytest.TempPathFactory) -> Path:
    """A latency table for resnet20 at input 16, profiled with test_profile's deterministic
    fake backend (as test_profile builds its tables), with a memory term and one per-block
    correction added so that every calibration field is present."""
    if "table" not in _BUILT:
        from edgedyn.profile.profiler import Profiler
        from test_profile import FakeBackend, FakeRunner, cfg

        d = factory.mktemp("vtable")
        with pytest.MonkeyPatch.context() as mp:
            FakeBackend.block_calls, FakeBackend.fail_after = 0, None
            mp.setattr(Profiler, "_backend", lambda self, **kw: FakeBackend(dataclasses.replace(self.options, **kw)))
            orig_init = Profiler.__init__

            def init(self, *a, **k):
                orig_init(self, *a, **k)
                FakeBackend.net = self.net

            mp.setattr(Profiler, "__init__", init)
            mp.setattr(FakeBackend, "overhead_runner", lambda self: FakeRunner(0.0005), raising=False)
            Profiler(cfg(d, validate=0), log=lambda m: None, progress=False).run()
        doc = json.loads((d / "t.json").read_text())
        cal = next(iter(doc["calibration"].values()))
        cal["coef"]["weight_melems"] = -0.01
        cal["corrections"] = {sorted(doc["entries"])[0]: 0.0005}
        (d / "t.json").write_text(json.dumps(doc))
        _BUILT["table"] = d / "t.json"
    return _BUILT["table"]


def table_net() -> DynamicNet:
    return DynamicNet.from_name("resnet20", input_size=16)


def small_run_dir(factory: pytest.TempPathFactory) -> Path:
    """A search run dir (subnets.json + weights.pt) with two sub-nets, as test_deploy makes one."""
    if "run" not in _BUILT:
        from test_deploy import make_run_dir

        _BUILT["run"] = make_run_dir(factory.mktemp("vrun") / "run", ratios=(0.25, 1.0))
    return _BUILT["run"]


def small_bundle(factory: pytest.TempPathFactory) -> Path:
    """A deployed ONNX Runtime bundle of :func:`small_run_dir` (as test_runtime deploys one)."""
    if "bundle" not in _BUILT:
        import edgedyn.export as export_mod
        from edgedyn.deploy import build as build_mod, deploy
        from test_deploy import FAST, _cached_export, _cached_splits

        run = small_run_dir(factory)
        out = factory.mktemp("vbundle") / "bundle"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(export_mod, "export_onnx", _cached_export(export_mod.export_onnx))
            mp.setattr(build_mod, "_load_splits", _cached_splits(build_mod._load_splits))
            deploy(run, out=out, threads=1, **FAST)
        # untrained nets tie on accuracy; rank the larger higher, as training would (not hashed)
        doc = json.loads((out / "manifest.json").read_text())
        for i, s in enumerate(doc["subnets"]):
            s["accuracy"]["test"] = 0.6 + 0.2 * i
        (out / "manifest.json").write_text(json.dumps(doc))
        _BUILT["bundle"] = out
    return _BUILT["bundle"]


@pytest.fixture(scope="module")
def table_path(tmp_path_factory) -> Path:
    return small_table(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return small_bundle(tmp_path_factory)


def _edit_table(src: Path, dst: Path, edit) -> Path:
    doc = json.loads(src.read_text())
    edit(doc)
    dst.write_text(json.dumps(doc))  # Python writes NaN / Infinity as a careless tool would
    return dst


def _cal(doc: dict) -> dict:
    return next(iter(doc["calibration"].values()))


def _one_line(err: BaseException, *parts: str) -> str:
    text = str(err)
    assert "\n" not in text, text
    for p in parts:
        assert p in text, (p, text)
    return text


# -- latency tables ------------------------------------------------------------------------
def test_table_as_built_loads_and_predicts(table_path: Path) -> None:
    table = LatencyTable.load(table_path)
    net = table_net()
    for spec in (net.min_spec(), net.full_spec()):
        assert 0 < table.predict(net, spec) < math.inf


def test_table_entry_of_infinity_is_refused(table_path: Path, tmp_path: Path) -> None:
    key = sorted(json.loads(table_path.read_text())["entries"])[3]
    bad = _edit_table(table_path, tmp_path / "inf.json", lambda d: d["entries"][key].update(ms=math.inf))
    assert "Infinity" in bad.read_text()
    with pytest.raises(ArtifactError) as err:
        LatencyTable.load(bad)
    _one_line(err.value, "inf.json", "entries[", "field 'ms'", "Infinity")


@pytest.mark.parametrize("field", ["offset_ms", "coef.block_sum", "coef.weight_melems", "corrections"])
def test_table_nan_calibration_is_refused(table_path: Path, tmp_path: Path, field: str) -> None:
    def edit(d: dict) -> None:
        cal = _cal(d)
        if field == "offset_ms":
            cal["offset_ms"] = math.nan
        elif field == "corrections":
            cal["corrections"] = {k: math.nan for k in cal["corrections"]}
        else:
            cal["coef"][field.split(".")[1]] = math.nan

    bad = _edit_table(table_path, tmp_path / "nan.json", edit)
    with pytest.raises(ArtifactError) as err:
        LatencyTable.load(bad)
    _one_line(err.value, "nan.json", "calibration[", field.split(".")[0], "NaN")


def test_negative_coefficient_prediction_is_refused_naming_model_and_table(table_path: Path,
                                                                           tmp_path: Path) -> None:
    bad = _edit_table(table_path, tmp_path / "neg.json", lambda d: _cal(d)["coef"].update(weight_melems=-1e3))
    table = LatencyTable.load(bad)  # a negative memory term is legitimate in itself ...
    net = table_net()
    with pytest.raises(ArtifactError) as err:  # ... a negative prediction is not
        table.predict(net, net.full_spec())
    _one_line(err.value, "neg.json", "'resnet20'", "not a finite number > 0")


def test_huge_call_overhead_is_refused(table_path: Path, tmp_path: Path) -> None:
    bad = _edit_table(table_path, tmp_path / "over.json", lambda d: d.update(call_overhead_ms=1e9))
    with pytest.raises(ArtifactError) as err:
        LatencyTable.load(bad)
    _one_line(err.value, "over.json", "call_overhead_ms")
    # an overhead as large as the largest entry loads, but zeroes every block: with a negative
    # offset the predictions would be negative, and they are refused
    def edit(d: dict) -> None:
        d["call_overhead_ms"] = max(e["ms"] for e in d["entries"].values())
        _cal(d)["offset_ms"] = -0.5

    table = LatencyTable.load(_edit_table(table_path, tmp_path / "over2.json", edit))
    net = table_net()
    with pytest.raises(ArtifactError, match="over2.json.*'resnet20'.*not a finite number > 0"):
        table.predict(net, net.min_spec())


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["backend"].update(threads=0), "backend.threads"),
    (lambda d: d.update(batch=0), "batch"),
    (lambda d: next(iter(d["entries"].values())).update(ms=-0.01), "field 'ms'"),
    (lambda d: next(iter(d["entries"].values())).update(n="many"), "field 'n'"),
    (lambda d: _cal(d).update(corrections="none"), "corrections"),
    (lambda d: d["device"].update(peak=math.inf), "device.peak"),
])
def test_other_impossible_table_fields_are_refused(table_path: Path, tmp_path: Path, edit, field: str) -> None:
    bad = _edit_table(table_path, tmp_path / "bad.json", edit)
    with pytest.raises(ArtifactError) as err:
        LatencyTable.load(bad)
    _one_line(err.value, "bad.json", field)


def test_deploy_with_a_nan_table_exits_2_and_writes_nothing(table_path: Path, tmp_path_factory,
                                                            tmp_path: Path) -> None:
    run = small_run_dir(tmp_path_factory)
    bad = _edit_table(table_path, tmp_path / "nan.json", lambda d: _cal(d)["coef"].update(block_sum=math.nan))
    out = tmp_path / "bundle"
    res = CliRunner().invoke(cli, ["deploy", "--run", str(run), "--table", str(bad), "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "nan.json" in lines[0] and "coef.block_sum" in lines[0], res.output
    assert not (out / "manifest.json").exists()


def test_nothing_non_finite_is_written(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "m.json"
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ArtifactError) as err:
            atomic_write_json(p, {"subnets": [{"predicted_ms": value}]})
        _one_line(err.value, "m.json", "subnets[0].predicted_ms")
    assert not p.exists() and not any(tmp_path.rglob("*.tmp"))
    atomic_write_json(p, {"predicted_ms": 1.5})
    assert json.loads(p.read_text()) == {"predicted_ms": 1.5}


# -- manifests ------------------------------------------------------------------------------
def _copy_bundle(bundle: Path, dst: Path, edit) -> Path:
    shutil.copytree(bundle, dst)
    doc = json.loads((dst / "manifest.json").read_text())
    edit(doc)
    (dst / "manifest.json").write_text(json.dumps(doc))
    return dst


@pytest.mark.parametrize("p99", [-0.5, math.nan, math.inf, 0.0])
def test_manifest_with_impossible_p99_is_refused(bundle: Path, tmp_path: Path, p99: float) -> None:
    b = _copy_bundle(bundle, tmp_path / "b", lambda d: d["subnets"][1]["measured"].update(p99=p99))
    for load in (Manifest.load, Selector.load):
        with pytest.raises(ArtifactError) as err:
            load(b)
        _one_line(err.value, "manifest.json", "subnets[1]", "p99")


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["subnets"][0].update(predicted_ms=math.nan), "predicted_ms"),
    (lambda d: d["subnets"][0].update(predicted_ms=-1.0), "predicted_ms"),
    (lambda d: d["subnets"][0]["measured"].update(median=-0.1), "median"),
    (lambda d: d["subnets"][0]["accuracy"].update(test=1.5), "test"),
    (lambda d: d["subnets"][0]["accuracy"].update(agreement=math.nan), "agreement"),
    (lambda d: d.update(threads=0), "threads"),
    (lambda d: d["subnets"][0].update(macs=-5), "macs"),
    (lambda d: d["checks"].update(prediction_error={"0": math.nan}), "checks.prediction_error.0"),
])
def test_manifest_other_impossible_numbers_are_refused(bundle: Path, tmp_path: Path, edit, field: str) -> None:
    b = _copy_bundle(bundle, tmp_path / "b", edit)
    with pytest.raises(ArtifactError) as err:
        Manifest.load(b)
    _one_line(err.value, "manifest.json", field)


# -- search results -------------------------------------------------------------------------
@pytest.mark.parametrize("edit, field", [
    (lambda d: d["subnets"][0].update(cost=math.nan), "subnets[0].cost"),
    (lambda d: d["subnets"][1].update(cost=-2.0), "subnets[1].cost"),
    (lambda d: d["subnets"][0].update(test_accuracy=1.2), "subnets[0].test_accuracy"),
    (lambda d: d["subnets"][0].update(widths=[0, 4]), "subnets[0].widths[0]"),
    (lambda d: d["subnets"][0].update(macs=1.5), "subnets[0].macs"),
    (lambda d: d["cost"].update(full=math.inf), "cost.full"),
    (lambda d: d["config"].update(lr=math.nan), "config.lr"),
    (lambda d: d["config"].update(seed=None), "config.seed"),  # found by the fuzz: deploy's int(None)
    (lambda d: d["config"].update(holdout_fraction=[0.1]), "config.holdout_fraction"),
])
def test_search_result_validator(tmp_path_factory, edit, field: str) -> None:
    doc = json.loads((small_run_dir(tmp_path_factory) / "subnets.json").read_text())
    validate_search_result(doc, "run/subnets.json")  # as written, it passes
    edit(doc)
    with pytest.raises(ArtifactError) as err:
        validate_search_result(doc, "run/subnets.json")
    _one_line(err.value, "run/subnets.json", field)


# -- the command line -------------------------------------------------------------------------
def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args)


def _usage_error(res, option: str) -> None:
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.lower().startswith("error")]
    assert len(errors) == 1 and option in errors[0], res.output
    assert "Traceback" not in res.output


@pytest.mark.timeout(60)
@pytest.mark.parametrize("option, value", [
    ("--budget-ms", "nan"), ("--budget-ms", "inf"), ("--budget-ms", "-1"), ("--budget-ms", "0"),
    ("--ramp", "nan:0.3"), ("--ramp", "2:inf"), ("--ramp", "2:0"),
    ("--duration", "nan"), ("--duration", "-inf"), ("--duration", "0"),
    ("--requests", "0"), ("--requests", "nan"), ("--requests", "2.5"),
    ("--threads", "0"), ("--threads", "-3"), ("--threads", "nan"),
    ("--subnet", "-1"),
])
def test_run_refuses_bad_numbers_naming_the_option(bundle: Path, option: str, value: str) -> None:
    args = ["run", "--bundle", str(bundle), option, value]
    if option not in ("--requests", "--duration"):
        args += ["--requests", "5"]
    _usage_error(_invoke(args), option)


@pytest.mark.timeout(60, method="thread")  # the old code hung inside onnxruntime, out of reach of a signal
def test_run_caps_threads_at_the_cpus_with_a_warning(bundle: Path) -> None:
    from edgedyn.validate import available_cpus

    res = _invoke(["run", "--bundle", str(bundle), "--threads", "100000", "--requests", "5", "--budget-ms", "50"])
    assert res.exit_code == 0, res.output
    assert f"--threads 100000 is more than the {available_cpus()} CPUs available here; using {available_cpus()}" \
        in res.output
    assert "policy budget: 5 requests" in res.output


@pytest.mark.parametrize("args, option", [
    (["profile", "--model", "resnet20", "--threads", "-3"], "--threads"),
    (["profile", "--model", "resnet20", "--batch", "nan"], "--batch"),
    (["profile", "--model", "resnet20", "--calibrate", "-1"], "--calibrate"),
    (["inspect", "--model", "resnet20", "--input-size", "inf"], "--input-size"),
    (["inspect", "--model", "resnet20", "--channel-groups", "0"], "--channel-groups"),
    (["inspect", "--model", "resnet20", "--num-classes", "1e9"], "--num-classes"),
    (["deploy", "--run", "nowhere", "--threads", "0"], "--threads"),
    (["deploy", "--run", "nowhere", "--measure-iters", "nan"], "--measure-iters"),
    (["search", "--lr", "nan"], "--lr"),
    (["search", "--lr", "-0.1"], "--lr"),
    (["search", "--batch-size", "0"], "--batch-size"),
    (["search", "--data-limit", "inf"], "--data-limit"),
    (["demo", "--requests", "nan"], "--requests"),  # "-5" too, but the old code ran the whole demo on it
])
def test_other_commands_refuse_bad_numbers(tmp_path: Path, monkeypatch, args: list[str], option: str) -> None:
    monkeypatch.chdir(tmp_path)
    res = _invoke(args)
    _usage_error(res, option)
    assert list(tmp_path.iterdir()) == []


# -- the runtime API ------------------------------------------------------------------------
def _fake_selector(**kw) -> Selector:
    from test_runtime import fake_selector

    return fake_selector(**kw)


@pytest.mark.parametrize("budget", ["abc", math.nan, math.inf, -1.0, 0.0, True, [1.0]])
def test_infer_refuses_a_bad_budget_with_an_edgedyn_error(budget) -> None:
    sel = _fake_selector()
    with pytest.raises(EdgedynError, match="budget_ms must be a finite number > 0") as err:
        sel.infer(X, budget)
    assert isinstance(err.value, NumberError) and isinstance(err.value, ValueError)
    assert sum(sel.stats()["counts"]) == 0  # nothing ran
    assert sel.infer(X, 3)[1].subnet == 1 and sel.infer(X, np.float32(1.5))[1].subnet == 0
    with pytest.raises(NumberError):
        _fake_selector(budget_ms=budget)


def test_infer_takes_a_cpu_tensor() -> None:
    sel = _fake_selector()
    out, info = sel.infer(torch.zeros(SHAPE), 2.5)
    assert isinstance(out, np.ndarray) and info.subnet == 1
    out, info = sel.infer(torch.zeros(SHAPE, requires_grad=True))  # no budget: the most accurate
    assert info.subnet == 2
    with pytest.raises(ValueError, match="dtype float64"):
        sel.infer(torch.zeros(SHAPE, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        sel.infer(torch.zeros((1, 3, 8, 8)))


def test_infer_refuses_a_tensor_off_the_cpu() -> None:
    sel = _fake_selector()
    x = torch.zeros(SHAPE, device="meta")  # stands for a CUDA tensor (any device but the CPU)
    with pytest.raises(EdgedynError, match="torch.Tensor on meta.*CPU") as err:
        sel.infer(x, 2.0)
    assert isinstance(err.value, ValueError) and sum(sel.stats()["counts"]) == 0


def test_real_bundle_serves_a_tensor(bundle: Path) -> None:
    with Selector.load(bundle, "budget", budget_ms=100.0) as sel:
        out, info = sel.infer(torch.zeros(SHAPE))
        ref, _ = sel.infer(X)
    assert out.shape == (1, 10) and np.allclose(out, ref)


@pytest.mark.timeout(30)
def test_serve_refuses_nan_duration_and_budgets() -> None:
    sel = _fake_selector()
    with pytest.raises(NumberError, match="duration"):
        serve(sel, [X], duration_s=math.nan)  # used to loop forever
    with pytest.raises(NumberError, match="budget"):
        serve(sel, [X], requests=3, budget=math.nan)
    with pytest.raises(NumberError, match="budget_ms"):
        make_budget(math.nan, None, None, 10, None)
    with pytest.raises(NumberError, match="A must be a finite number > 0"):
        make_budget(None, None, "nan:0.3", 10, None)


def test_schedule_rows_must_be_finite(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    for text, row, what in [("[[0, 1.0], [5, NaN]]", 1, "budget_ms"), ("[[0, Infinity]]", 0, "budget_ms"),
                            ("[[NaN, 1.0]]", 0, "at"), ("[[0, 1e999]]", 0, "budget_ms")]:
        p.write_text(text)
        with pytest.raises(EdgedynError) as err:
            load_schedule(p)
        _one_line(err.value, "s.json", f"entry {row}", what)


def test_a_ramp_between_extremes_never_reaches_zero() -> None:
    # found by the fuzz: a + (b - a) * f cancelled to a budget of 0.0 at the end of 1e308:1e-300
    fn = make_budget(None, None, "1e308:1e-300", 10, None)
    values = [fn(k, 0.0) for k in range(12)]
    assert values[0] == 1e308 and values[10] == 1e-300 and all(0 < v < math.inf for v in values)
