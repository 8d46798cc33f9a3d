"""Blocked layouts: edgedyn's NCHWc rules against ONNX Runtime's own optimized graphs."""

import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from edgedyn.blocks import PLAIN, Layout
from edgedyn.dynamic import DynamicNet
from edgedyn.dynamic.onnx_derive import SubnetOnnx
from edgedyn.errors import ArtifactError
from edgedyn.profile import BlockKey, LatencyTable
from edgedyn.profile.calibration import fit_calibration
from edgedyn.profile.table import key_features

ort = pytest.importorskip("onnxruntime")


def _block() -> int:
    from edgedyn.backends.onnxruntime import nchwc_block

    return nchwc_block(1)


needs_nchwc = pytest.mark.skipif(_block() == 0, reason="ONNX Runtime uses no NCHWc layout on this CPU")


def _optimized_graph(model, tmp: Path):
    """ONNX Runtime's optimized graph of ``model`` (an ONNX ModelProto)."""
    import onnx

    from edgedyn.backends.onnxruntime import session_options

    (tmp / "m.onnx").write_bytes(model.SerializeToString())
    so = session_options(1)
    so.optimized_model_filepath = str(tmp / "opt.onnx")
    ort.InferenceSession(str(tmp / "m.onnx"), so, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp / "opt.onnx")).graph


def _pad(c: int, b: int) -> int:
    return -(-c // b) * b


@needs_nchwc
@pytest.mark.parametrize("model,size,seeds,edits", [
    # resnet20's edits put 10 and 14 channels where convs read them: plain convs with block 8,
    # on the residual stream (group 0) and before a residual add (group 1)
    ("resnet20", 32, (0, 1, 2, 3), ({0: 10}, {1: 10}, {0: 14, 1: 10, 2: 12}, {4: 20, 5: 28})),
    ("resnet18", 64, (0, 1, 2, 3), ())])
def test_nchwc_rules_match_onnxruntime(model, size, seeds, edits):
    """Every reorder and every blocked conv edgedyn predicts is what ONNX Runtime builds, and nothing else."""
    b = _block()
    layout = Layout("nchwc", b)
    net = DynamicNet.from_name(model, input_size=size, num_classes=10)
    assert layout.applies(net)
    specs = [net.min_spec(), net.full_spec()] + [net.random_spec(s) for s in seeds]
    for edit in edits:
        spec = net.full_spec()
        for group, width in edit.items():
            spec = spec.replace(group, width)
        specs.append(spec)
    # each sub-net's graph sliced from one export (the graph its own export gives: test_onnx_derive)
    derived = SubnetOnnx.export(net, torch.zeros(1, 3, size, size))
    for spec in specs:
        keys = layout.subnet_keys(net, spec)
        with tempfile.TemporaryDirectory() as tmp:
            graph = _optimized_graph(derived.derive(spec), Path(tmp))
        inits = {i.name: tuple(i.dims) for i in graph.initializer}
        nodes = [n for n in graph.node if n.domain == "com.microsoft.nchwc"]
        reorders = Counter(next(a.i for a in n.attribute if a.name == "channels")
                           for n in nodes if n.op_type == "ReorderOutput")
        assert reorders == Counter(k.c_in for k in keys if k.op == "reorder"), spec
        reorders_in = Counter(n.input[0] for n in nodes if n.op_type == "ReorderInput")
        assert sum(reorders_in.values()) == sum(k.op == "reorder_in" for k in keys), spec
        plain_adds = sum(n.op_type == "Add" and not n.domain for n in graph.node)
        assert plain_adds == sum(k.op == "add" for k in keys), spec
        convs = Counter(inits[n.input[1]][:2] for n in nodes if n.op_type == "Conv")
        expected = Counter((_pad(k.c_out, b), k.c_in if k.c_in < b else _pad(k.c_in, b))
                           for k in keys if k.op == "conv" and k.layout == layout.tag)
        assert convs == expected, spec
        plain_convs = Counter(inits[n.input[1]][:2] for n in graph.node
                              if n.op_type in ("Conv", "FusedConv") and n.domain != "com.microsoft.nchwc")
        assert plain_convs == Counter((k.c_out, k.c_in) for k in keys if k.op == "conv" and k.layout == "plain"), spec
        pools = sum(n.op_type == "MaxPool" for n in nodes)
        assert pools == sum(k.op == "maxpool" and k.layout != "plain" for k in keys)


@needs_nchwc
def test_nchwc_block_models_run_as_built():
    from edgedyn.backends import BackendOptions
    from edgedyn.backends.onnxruntime import OnnxRuntimeBackend

    b = _block()
    tag = f"nchwc{b}"
    backend = OnnxRuntimeBackend(BackendOptions(threads=1))
    cases = [BlockKey("conv", 3, 8, 8, 8, 3, 1, 1, act="relu", layout=tag),  # narrow plain input
             BlockKey("conv", b + 4, b + 2, 8, 8, 3, 2, 1, residual=True, act="relu", layout=tag),
             BlockKey("conv", 2 * b, b, 8, 8, 1, 1, 0, layout=tag),
             BlockKey("maxpool", b, b, 8, 8, 3, 2, 1, layout=tag),
             BlockKey("reorder", 5, 5, 8, 8, layout=tag)]
    for key in cases:
        runner = backend.block_runner(key)
        out = runner.infer(runner._x)
        c = key.c_out if key.op == "reorder" else _pad(key.c_out, b)
        assert out.shape == (1, c, *key.out_hw)
        assert np.isfinite(out).all()


def test_plain_layout_keeps_isolated_blocks_and_unmodelled_nets_stay_plain():
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.random_spec(0)
    assert all(k.layout == "plain" and k.op != "reorder" for k in PLAIN.subnet_keys(net, spec))
    mobile = DynamicNet.from_name("mobilenet_v2", input_size=32, num_classes=10)
    layout = Layout("nchwc", 16)
    assert not layout.applies(mobile)  # depthwise convs: not modelled
    assert all(k.layout == "plain" for k in layout.all_keys(mobile))
    grid = set(layout.all_keys(net))
    for s in [net.min_spec(), net.full_spec(), spec]:
        assert set(layout.subnet_keys(net, s)) <= grid  # the profiling grid covers every sub-net


def test_block8_grid_covers_plain_convs():
    """With block 8, convs reading 10 or 14 channels run plain; the profiling grid holds their keys."""
    from edgedyn.blocks.layout import runs_plain

    assert [c for c in range(1, 33) if runs_plain(c, 8)] == [9, 10, 11, 13, 14, 15, 17, 18, 19, 21, 22, 23, 25, 26,
                                                               27, 29, 30, 31]
    assert not any(runs_plain(c, 16) for c in range(4, 65, 4))
    net = DynamicNet.from_name("resnet20", input_size=32, num_classes=10)
    layout = Layout("nchwc", 8)
    grid = set(layout.all_keys(net))
    spec = net.full_spec().replace(0, 14).replace(1, 10)
    keys = layout.subnet_keys(net, spec)
    plain = [k for k in keys if k.op == "conv" and k.layout == "plain"]
    # layer1.0.conv1 (14 -> 10), conv2 (10 -> 14, its add after it), layer1.1/2.conv1, layer2.0's conv1 and shortcut
    assert sorted((k.c_in, k.c_out) for k in plain) == [(10, 14), (14, 10), (14, 16), (14, 16), (14, 32), (14, 32)]
    assert all(not k.residual for k in plain)
    assert sum(k.op == "add" for k in keys) >= 1
    for s in [spec, net.min_spec(), net.full_spec()] + [net.random_spec(i) for i in range(8)]:
        assert set(layout.subnet_keys(net, s)) <= grid


def test_fit_calibration_picks_memory_terms_only_when_they_help():
    rng = np.random.default_rng(0)
    feats = [{"block_sum": float(s), "weight_melems": float(w), "act_melems": float(a)}
             for s, w, a in rng.uniform([0.2, 0.01, 0.05], [1.0, 0.3, 0.4], size=(20, 3))]
    plain = np.array([1.2 * f["block_sum"] + 0.05 for f in feats])
    fit = fit_calibration(feats, plain)
    assert set(fit.coef) == {"block_sum"} and fit.coef["block_sum"] == pytest.approx(1.2) and fit.cv_mape < 1e-6
    assert fit.corrections is None and fit.prior_rel == 0.0  # no block counts given: no corrections
    memory = np.array([0.9 * f["block_sum"] - 0.4 * f["weight_melems"] + 0.3 * f["act_melems"] + 0.1
                       for f in feats])
    fit = fit_calibration(feats, memory)
    assert fit.coef == pytest.approx({"block_sum": 0.9, "weight_melems": -0.4, "act_melems": 0.3})
    assert fit.offset_ms == pytest.approx(0.1) and fit.cv_mape < 1e-6
    fit = fit_calibration(feats[:6], memory[:6])  # too few sub-nets for three terms
    assert set(fit.coef) == {"block_sum"}


def _block_world(n_subnets: int, seed: int):
    """Sub-nets made of 6-of-40 blocks; each block's isolated timing is 15% off its true cost."""
    rng = np.random.default_rng(seed)
    true = rng.uniform(0.01, 0.05, 40)
    prior = true * (1 + 0.15 * rng.standard_normal(40))
    counts = np.zeros((n_subnets, 40))
    for row in counts:
        row[rng.choice(40, 6, replace=False)] = 1
    measured = (counts @ true + 0.02) * (1 + 0.005 * rng.standard_normal(n_subnets))
    return counts, prior, measured


def test_per_block_corrections_learn_what_isolated_timings_get_wrong():
    counts, prior, measured = _block_world(120, seed=1)
    feats = [{"block_sum": float(s), "weight_melems": 0.0, "act_melems": 0.0} for s in counts @ prior]
    train, test = slice(0, 90), slice(90, None)
    fit = fit_calibration(feats[train], measured[train], counts[train], prior)
    assert fit.prior_rel > 0 and fit.corrections is not None
    plain = fit_calibration(feats[train], measured[train])
    x = counts[test] @ prior
    err_plain = np.abs(plain.coef["block_sum"] * x + plain.offset_ms - measured[test]) / measured[test]
    corrected = fit.coef["block_sum"] * (x + counts[test] @ fit.corrections) + fit.offset_ms
    err = np.abs(corrected - measured[test]) / measured[test]
    assert err.mean() < 0.5 * err_plain.mean()  # unseen sub-nets: the joint fit halves the error


def test_blocks_timed_at_the_calls_fixed_cost_are_still_corrected():
    """A block whose timing fell to the fixed cost of a call has an entry of ~0 ms; the prior's
    width follows the timing as measured (fixed cost included), so the sub-nets can correct it."""
    counts, prior, measured = _block_world(120, seed=4)
    overhead = 0.03
    prior[:5] = 0.0  # five blocks timed at the call's fixed cost: their entries are clamped to 0
    feats = [{"block_sum": float(s), "weight_melems": 0.0, "act_melems": 0.0} for s in counts @ prior]
    train = np.arange(120) < 90
    test = ~train & (counts[:, :5].sum(1) > 0)  # unseen sub-nets holding a clamped block
    assert test.sum() >= 5

    def error(timed):
        fit = fit_calibration([f for f, t in zip(feats, train) if t], measured[train], counts[train], timed)
        d = fit.corrections if fit.corrections is not None else np.zeros(40)
        pred = fit.coef["block_sum"] * (counts[test] @ (prior + d)) + fit.offset_ms
        return float(np.mean(np.abs(pred - measured[test]) / measured[test])), d

    err_timed, d = error(prior + overhead)
    err_entry, _ = error(prior)  # the old prior: proportional to the clamped entry, so ~0 wide
    assert d[:5].mean() > 0.5 * 0.01  # the clamped blocks got back most of their cost (>= 0.01 ms each)
    assert err_timed < 0.6 * err_entry


def test_as_run_pools_keys_onnxruntime_runs_on_the_same_padded_shapes():
    from edgedyn.blocks import as_run
    from edgedyn.profile.grid import share_as_run
    from edgedyn.profile.table import Entry

    k = lambda ci, co, layout="nchwc16": BlockKey("conv", ci, co, 16, 16, 3, 1, 1, act="relu", layout=layout)
    assert as_run(k(16, 8)) == as_run(k(16, 16)) == k(16, 16)
    assert as_run(k(24, 20)) == as_run(k(32, 32)) == k(32, 32)  # blocked input: padded too
    assert as_run(k(8, 8)) == k(8, 16) and as_run(k(8, 8)) != as_run(k(12, 8))  # plain input: as it is
    assert as_run(k(16, 8, "plain")) == k(16, 8, "plain")
    reorder = BlockKey("reorder", 8, 8, 16, 16, layout="nchwc16")
    assert as_run(reorder) == reorder
    entries = {k(16, 8): Entry(0.040, p10=0.03, p90=0.05, n=3), k(16, 16): Entry(0.030, n=3),
               k(16, 24): Entry(0.050), k(8, 8): Entry(0.020, "interpolated"), k(8, 16): Entry(0.024), reorder: Entry(0.01)}
    assert share_as_run(entries) == 2  # 16->8 and 16->16; the interpolated 8->8 is not a timing
    assert entries[k(16, 8)].ms == entries[k(16, 16)].ms == pytest.approx(0.035)
    assert entries[k(16, 8)].p10 == 0.03 and entries[k(16, 8)].n == 3  # each keeps its own spread
    assert entries[k(16, 24)].ms == 0.050 and entries[k(8, 8)].ms == 0.020 and entries[k(8, 16)].ms == 0.024
    before = dict(entries)
    assert share_as_run(entries) == 2 and entries == before  # idempotent (resume, --merge)


def test_per_block_corrections_are_dropped_when_the_table_is_already_right():
    counts, _, _ = _block_world(60, seed=2)
    prior = np.random.default_rng(3).uniform(0.01, 0.05, 40)
    measured = 1.1 * (counts @ prior) + 0.02  # exactly a scaled block sum: nothing to correct
    feats = [{"block_sum": float(s), "weight_melems": 0.0, "act_melems": 0.0} for s in counts @ prior]
    fit = fit_calibration(feats, measured, counts, prior)
    assert fit.prior_rel == 0.0 and fit.corrections is None and fit.cv_mape < 1e-6


def test_key_features_count_padded_channels():
    plain = BlockKey("conv", 20, 28, 8, 8, 3, 1, 1)
    blocked = BlockKey("conv", 20, 28, 8, 8, 3, 1, 1, layout="nchwc16")
    assert key_features([plain]) == pytest.approx((28 * 20 * 9 / 1e6, 28 * 64 / 1e6))
    assert key_features([blocked]) == pytest.approx((32 * 32 * 9 / 1e6, 32 * 64 / 1e6))


def test_table_rejects_entries_of_another_layout(tmp_path):
    from edgedyn.profile.table import Entry

    table = LatencyTable(device={"kind": "cpu"}, backend={"name": "onnxruntime"}, layout=PLAIN)
    table.entries[BlockKey("reorder", 4, 4, 8, 8, layout="nchwc16")] = Entry(0.01)
    table.save(tmp_path / "t.json")
    with pytest.raises(ArtifactError, match="t.json: .*layout 'nchwc16' does not match field 'layout'"):
        LatencyTable.load(tmp_path / "t.json")
    d = json.loads((tmp_path / "t.json").read_text())
    d["layout"] = {"kind": "nchwc", "block": 0}
    (tmp_path / "t.json").write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="field 'layout' is invalid"):
        LatencyTable.load(tmp_path / "t.json")
