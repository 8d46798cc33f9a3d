"""Machine states at run time: the selector serves by the latencies of the state the machine
is in, and a change of state (a Jetson's power mode, mocked here) switches them while
requests are being served, dropping none."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from edgedyn.bundle import Manifest
from edgedyn.errors import ArtifactError
from edgedyn.runtime import cli_cmd
from edgedyn.runtime.states import StateWatcher, ranking_in_state
from test_runtime import SHAPE, X, fake_selector

STATES = {"deployed": "maxn", "by_id": {
    "maxn": {"label": "jetson power mode MAXN", "key": {"power_mode": {"name": "MAXN"}}, "scale": [1.0, 1.0, 1.0]},
    "15w": {"label": "jetson power mode 15W", "key": {"power_mode": {"name": "15W"}}, "scale": [2.5, 2.4, 2.2]}}}


def selector_with_states(**kw):
    sel = fake_selector(**kw)
    sel.manifest.states = STATES
    return sel


class MockPowerMode:
    """nvpmodel, mocked: the mode the board reports, changed by the test."""

    def __init__(self, mode: str) -> None:
        self.mode, self.reads = mode, 0

    def __call__(self) -> str:
        self.reads += 1
        return self.mode


def test_the_state_scales_the_latencies_decisions_use():
    sel = selector_with_states()
    assert sel.select(4.5) == 2 and sel.state is None
    assert sel.set_state("15w") and sel.state == "15w"
    assert sel.expected_ms == pytest.approx([2.5, 4.8, 8.8])
    assert sel.select(4.5) == 0 and sel.select(5.0) == 1
    assert sel.set_state("maxn") and sel.select(4.5) == 2
    assert not sel.set_state("maxn")  # no change


def test_a_power_mode_change_switches_latencies_while_serving_and_drops_no_request():
    sel = selector_with_states()
    mode = MockPowerMode("maxn")
    watcher = sel.watch_state(mode, interval_s=0.005)
    stop = threading.Event()
    served: list[int] = []
    errors: list[BaseException] = []

    def client() -> None:
        try:
            while not stop.is_set():
                out, info = sel.infer(X, 4.5)
                assert int(out[0, 0]) == info.subnet
                served.append(info.subnet)
        except BaseException as err:
            errors.append(err)

    clients = [threading.Thread(target=client) for _ in range(4)]
    try:
        for t in clients:
            t.start()
        time.sleep(0.2)
        assert sel.state == "maxn" and sel.select(4.5) == 2
        mode.mode = "15w"  # the board drops to 15 W
        deadline = time.monotonic() + 5
        while sel.state != "15w" and time.monotonic() < deadline:
            time.sleep(0.005)
        n_switch = len(served)
        time.sleep(0.2)  # calls decided before the switch have long returned
        n_after = len(served)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in clients:
            t.join()
        watcher.stop()
    assert not errors and sel.state == "15w" and watcher.changes == 1 and mode.reads > 2
    assert 2 in served[:n_switch] and set(served[n_after:]) == {0} and len(served) > n_after  # the 15 W pick
    stats = sel.stats()
    assert sum(stats["counts"]) == len(served) == sum(r.calls for r in sel.runners) and stats["errors"] == 0


def test_an_unknown_state_keeps_the_latencies_and_warns_once(caplog):
    sel = selector_with_states()
    with caplog.at_level(logging.WARNING, logger="edgedyn.runtime"):
        assert not sel.set_state("another") and not sel.set_state("another")
    assert sum("none of the bundle's 2 states" in r.getMessage() for r in caplog.records) == 1
    assert sel.select(4.5) == 2


def test_a_failing_reader_never_stops_serving(caplog):
    calls = {"n": 0}

    def reader() -> str:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("nvpmodel: no such device")
        return "maxn"

    sel = selector_with_states()
    with caplog.at_level(logging.WARNING, logger="edgedyn.runtime"):
        w = sel.watch_state(reader, interval_s=0.005)
        time.sleep(0.05)
        sel.infer(X, 4.5)
        w.stop()
    assert sel.state == "maxn" and any("cannot read it" in r.getMessage() for r in caplog.records)


def test_run_follows_the_power_mode_on_a_jetson_and_reads_the_state_once_elsewhere(monkeypatch):
    mode = MockPowerMode("15w")
    monkeypatch.setattr("edgedyn.runtime.states.machine_state_reader", lambda manifest: mode)
    sel = selector_with_states()
    assert cli_cmd._follow_state(sel) is None and sel.state == "15w" and mode.reads == 1  # cpu: read at start
    sel = selector_with_states()
    sel.manifest.device["kind"] = "jetson"
    watcher = cli_cmd._follow_state(sel)
    try:
        assert isinstance(watcher, StateWatcher) and sel.state == "15w"
    finally:
        watcher.stop()


def test_ranking_in_state_keeps_the_order_and_moves_the_fastest():
    sel = fake_selector()
    base = sel._ranking
    moved = ranking_in_state(base, [5.0, 1.0, 1.0])
    assert moved.order == base.order and moved.fastest == 1 and base.fastest == 0


def test_manifest_states_are_checked(tmp_path):
    sel = selector_with_states()
    obj = sel.manifest.to_dict()
    assert Manifest.from_dict(obj, tmp_path / "m.json").states == STATES
    bad = {**obj, "states": {"deployed": "maxn", "by_id": {"maxn": {"scale": [1.0]}}}}
    with pytest.raises(ArtifactError, match=r"states.by_id\[maxn\]: field 'scale' has 1 entries for 3 sub-nets"):
        Manifest.from_dict(bad, tmp_path / "m.json")
    bad = {**obj, "states": {"deployed": "x", "by_id": STATES["by_id"]}}
    with pytest.raises(ArtifactError, match="states.deployed"):
        Manifest.from_dict(bad, tmp_path / "m.json")
    assert np.prod(SHAPE) > 0
