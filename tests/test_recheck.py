"""Machine states, probes and ``edgedyn recheck`` on a deterministic fake machine.

The fake backend of ``test_profile`` times every whole sub-net at an exact function of its
blocks, so the table it profiles predicts that machine exactly; a "moved" machine is the
same function slowed by a known scale and offset, and ``recheck`` must find them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import test_profile
from edgedyn.blocks.layout import Layout
from edgedyn.cli import cli
from edgedyn.dynamic import DynamicNet
from edgedyn.errors import ArtifactError, EdgedynError
from edgedyn.profile import LatencyTable, subnet_keys
from edgedyn.profile.profiler import Profiler
from edgedyn.profile.recheck import recheck
from edgedyn.profile.states import (
    Correction,
    fit_correction,
    probe_specs,
    spread_subset,
    state_id,
    state_key,
)
from test_profile import OFFSET, SCALE, cfg, fake_ms

fake = test_profile.fake


def true_ms(net: DynamicNet, spec) -> float:
    """The fake machine's latency of a whole sub-net, as it was profiled."""
    return SCALE * sum(fake_ms(k) for k in subnet_keys(net, spec)) + OFFSET


def moved(scale: float, offset: float, noise: float = 0.0, seed: int = 0):
    """A ``measure`` for recheck: the profiled machine slowed by ``scale`` and ``offset``."""
    rng = np.random.default_rng(seed)

    def measure(backend, net, specs):
        return [scale * true_ms(net, s) * (1 + noise * rng.standard_normal()) + offset for s in specs]

    return measure


KEY_2T = {"kind": "cpu", "backend": "onnxruntime", "backend_version": "fake-1", "threads": 2, "cpu_model": "Fake CPU"}


@pytest.fixture
def profiled(fake, tmp_path) -> Path:
    Profiler(cfg(tmp_path, calibrate=12, validate=0, threads=1, probes=8), log=lambda m: None, progress=False).run()
    return tmp_path / "t.json"


def test_profile_stores_probes_in_its_own_state(profiled):
    table = LatencyTable.load(profiled)
    assert table.base_state in table.states and len(table.states) == 1
    state = table.states[table.base_state]
    assert state.id == state_id(state_key(table.device, table.backend)) and state.threads == 1
    net = DynamicNet.from_name("resnet20", input_size=16)
    probes = state.models[net.arch_signature()]
    assert [tuple(p["widths"]) for p in probes.probes] == [s.widths for s in probe_specs(net, 8)]
    for p, s in zip(probes.probes, probe_specs(net, 8)):  # timed as the fake machine runs them
        assert p["measured_ms"] == pytest.approx(true_ms(net, s), rel=1e-4)
    assert probes.correction.is_identity and probes.net["input_size"] == 16
    # the smallest and the full model are probes, in order of MACs
    assert probes.probes[0]["widths"] == list(net.min_spec().widths)
    assert probes.probes[-1]["widths"] == list(net.full_spec().widths)


def test_recheck_recovers_a_known_scale_and_offset(profiled, tmp_path):
    out = tmp_path / "now.json"
    lines: list[str] = []
    res = recheck(profiled, out, measure=moved(1.3, 0.04, noise=0.002), state_key=KEY_2T, log=lines.append)
    c = res.models[0].report.correction
    assert c.form == "scale+offset"
    assert c.scale == pytest.approx(1.3, rel=0.02) and c.offset_ms == pytest.approx(0.04, rel=0.02)
    assert res.models[0].report.mape_before > 20 and res.models[0].report.mape_after < 1.0
    assert "probe MAPE" in lines[0] and "->" in lines[0]
    table = LatencyTable.load(out)
    assert len(table.states) == 2 and table.states[state_id(KEY_2T)].provenance["source_table"] == str(profiled)
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.random_spec(5)
    table.select_state(key=KEY_2T)
    assert table.predict(net, spec) == pytest.approx(1.3 * true_ms(net, spec) + 0.04, rel=0.01)
    assert table.threads == 2
    table.select_state(key=state_key(table.device, table.backend))  # the profiled state: as profiled
    assert table.predict(net, spec) == pytest.approx(true_ms(net, spec), rel=0.01)


def test_a_pure_slowdown_is_fitted_as_a_scale(profiled, tmp_path):
    res = recheck(profiled, tmp_path / "now.json", measure=moved(0.8, 0.0), state_key=KEY_2T, log=lambda m: None)
    c = res.models[0].report.correction
    assert c.scale == pytest.approx(0.8, rel=0.01) and abs(c.offset_ms) < 1e-3


def test_recheck_refuses_probes_no_correction_fits_and_writes_nothing(profiled, tmp_path):
    def scrambled(backend, net, specs):
        ms = [true_ms(net, s) for s in specs]
        return list(np.random.default_rng(1).permutation(ms))

    out = tmp_path / "now.json"
    with pytest.raises(ArtifactError, match=r"do not fit the table: .*nothing written.*edgedyn profile"):
        recheck(profiled, out, measure=scrambled, state_key=KEY_2T, log=lambda m: None)
    assert not out.exists()


def test_two_states_pick_the_matching_one_and_warn_once_when_none_does(profiled, tmp_path, caplog):
    recheck(profiled, tmp_path / "two.json", measure=moved(2.0, 0.0), state_key=KEY_2T, log=lambda m: None)
    table = LatencyTable.load(tmp_path / "two.json")
    net = DynamicNet.from_name("resnet20", input_size=16)
    spec = net.full_spec()
    assert table.select_state(key=dict(KEY_2T)).id == state_id(KEY_2T)
    assert table.predict(net, spec) == pytest.approx(2 * true_ms(net, spec), rel=0.01)
    other = {**KEY_2T, "cpu_model": "Another CPU"}
    with caplog.at_level(logging.WARNING, logger="edgedyn.table"):
        table.select_state(key=other)
        table.select_state(key=other)
    warned = [r for r in caplog.records if "none of its 2 machine states matches" in r.getMessage()]
    assert len(warned) == 1 and "edgedyn recheck" in warned[0].getMessage()
    assert table.active_state == table.base_state  # falls back to the profiled state
    assert table.predict(net, spec) == pytest.approx(true_ms(net, spec), rel=0.01)


def test_a_table_without_states_predicts_as_before(fake, tmp_path):
    Profiler(cfg(tmp_path, calibrate=6, validate=0, threads=1, probes=0), log=lambda m: None, progress=False).run()
    table = LatencyTable.load(tmp_path / "t.json")
    assert table.states == {} and table.current_state() is None
    net = DynamicNet.from_name("resnet20", input_size=16)
    assert table.predict(net, net.full_spec()) == table.raw_predict(net, net.full_spec())


def test_recheck_bad_input_one_line_exit_2_nothing_written(profiled, fake, tmp_path):
    run = CliRunner().invoke
    out = tmp_path / "x.json"
    cases = {
        "--probes 0": (["--out", str(out), "--probes", "0"], "--probes must be >= 2"),
        "more probes than held": (["--out", str(out), "--probes", "9"], "holds 8 probes"),
        "out is the input": (["--out", str(profiled)], "it is the input table"),
        "another model": (["--out", str(out), "--model", "resnet56"], "holds no calibration of resnet56"),
    }
    before = profiled.read_bytes()
    for name, (args, msg) in cases.items():
        r = run(cli, ["recheck", "--table", str(profiled), *args])
        assert r.exit_code == 2, name
        assert msg in r.output and len(r.output.strip().splitlines()) == 1, (name, r.output)
        assert not out.exists() and profiled.read_bytes() == before
    # a table written before probes existed: says how to re-check it
    Profiler(cfg(tmp_path, out=tmp_path / "old.json", calibrate=6, validate=0, threads=1, probes=0),
             log=lambda m: None, progress=False).run()
    r = run(cli, ["recheck", "--table", str(tmp_path / "old.json"), "--out", str(out)])
    assert r.exit_code == 2 and "written before probes existed" in r.output
    assert "--model resnet20 --input-size 16" in r.output
    # another precision or an analytic table
    obj = json.loads(profiled.read_text())
    for field, value, msg in (("precision", "int8", "precision"), ("measured", False, "analytic")):
        bad = tmp_path / f"bad-{field}.json"
        bad.write_text(json.dumps({**obj, field: value}))
        r = run(cli, ["recheck", "--table", str(bad), "--out", str(out)])
        assert r.exit_code == 2 and msg in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_fit_correction_and_probe_spread_units():
    p = np.array([0.1, 0.2, 0.4, 0.8, 1.6])
    rep = fit_correction(p, 1.1 * p + 0.02)
    assert rep.correction.form == "scale+offset" and rep.mape_after < 1e-6
    assert Correction("scale", 2.0, 0.0).apply(1.5) == 3.0
    assert spread_subset(12, 4) == [0, 4, 7, 11] and spread_subset(3, 5) == [0, 1, 2]
    with pytest.raises(EdgedynError):
        probe_specs(DynamicNet.from_name("resnet20", input_size=16), 1)


def test_profile_merge_at_another_thread_count_adds_a_state_of_its_own(profiled, tmp_path):
    before = LatencyTable.load(profiled)
    Profiler(cfg(tmp_path, calibrate=12, validate=0, threads=2, probes=8, merge=True), log=lambda m: None,
             progress=False).run()
    table = LatencyTable.load(profiled)
    assert len(table.states) == 2 and table.base_state == before.base_state
    assert table.backend["threads"] == 1 and table.entries.keys() == before.entries.keys()
    merged = next(st for sid, st in table.states.items() if sid != table.base_state)
    assert merged.source == "merge" and merged.threads == 2 and merged.table is not None
    assert merged.table.backend["threads"] == 2 and merged.table.states == {}
    net = DynamicNet.from_name("resnet20", input_size=16)
    assert net.arch_signature() in merged.models  # its probes, for a later re-check of that state
    spec = net.random_spec(3)
    assert table.select_state(key=merged.key).id == merged.id and table.threads == 2
    assert table.predict(net, spec) == pytest.approx(merged.table.raw_predict(net, spec))
    again = LatencyTable.load(profiled)  # it round-trips
    assert again.states[merged.id].table.to_dict() == merged.table.to_dict()


def test_a_curved_state_change_is_fitted_by_the_quadratic_form_only_where_it_earns_it():
    p = np.linspace(0.1, 0.8, 12)
    curved = 0.03 + 0.9 * p + 0.6 * p * p  # another thread count: small sub-nets slower, large ones not
    rep = fit_correction(p, curved)
    assert rep.correction.form == "quadratic" and rep.mape_after < 0.1
    assert rep.correction.apply(0.5) == pytest.approx(0.03 + 0.45 + 0.15)
    # data a scale and offset explain keep the simpler form (parsimony), and 5 probes cannot fit it
    assert fit_correction(p, 1.2 * p + 0.01).correction.form == "scale+offset"
    assert fit_correction(p[:5], 0.03 + 0.9 * p[:5] + 0.6 * p[:5] ** 2).correction.form != "quadratic"


def test_a_table_of_another_layout_is_refused_before_anything_is_timed(profiled, tmp_path):
    """Two CPUs of one name (AVX-512 and AVX2 EPYCs are both "AMD EPYC") lay ONNX Runtime's
    channels out in blocks of 16 and 8: no correction of the timings can turn one layout model
    into the other, so recheck names the field and times nothing."""
    doc = json.loads(profiled.read_text())
    assert doc["layout"] == {"kind": "plain", "block": 0}  # the fake backend's
    doc["layout"] = {"kind": "nchwc", "block": 16}
    other = tmp_path / "avx512.json"
    other.write_text(json.dumps(doc))
    timed = []
    out = tmp_path / "now.json"
    with pytest.raises(ArtifactError, match=r"avx512.json: field 'layout' is 'nchwc16', \S+ runs 'plain' on this "
                                            r"device: the table was profiled on another CPU"):
        recheck(other, out, measure=lambda be, net, specs: timed.append(1) or [1.0] * len(specs),
                state_key=KEY_2T, layout=Layout(), log=lambda m: None)
    assert not timed and not out.exists()
