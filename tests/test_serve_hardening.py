"""``edgedyn run`` / ``serve`` hardening (issue 23): ``--json`` never destroys another artifact,
Ctrl-C and SIGTERM end a run with its partial report, memory is bounded in the number of
requests, request inputs come in the model's dtype, a schedule file is parsed with bounds, and a
closed selector refuses to serve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import sigint_default
from edgedyn.cli import cli
from edgedyn.deploy import deploy
from edgedyn.errors import EdgedynError
from edgedyn.runtime.selector import SelectorClosed
from edgedyn.runtime.serve import load_inputs, load_schedule, serve
from edgedyn.runtime.summary import LatencySummary
from test_deploy import FAST, fast_export, make_run_dir  # noqa: F401 - fixture re-used
from test_runtime import X, fake_selector

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, fast_export) -> Path:  # noqa: F811
    run = make_run_dir(tmp_path_factory.mktemp("sh") / "run", ratios=(0.25,))
    out = tmp_path_factory.mktemp("sh") / "bundle"
    deploy(run, out=out, threads=1, **FAST)
    return out


def _one_line_error(res) -> str:
    assert res.exit_code == 2, res.output
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


# -- 1. --json refuses before destroying ---------------------------------------------------
def test_run_json_never_overwrites_a_bundle_file_or_another_artifact(bundle: Path, tmp_path: Path) -> None:
    manifest = bundle / "manifest.json"
    before = manifest.read_bytes()
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"schema": "edgedyn.latency_table/1", "entries": {}}))
    notes = tmp_path / "notes.json"
    notes.write_text("not json at all")
    for target, found in [(manifest, "a file of the bundle"), (table, "edgedyn.latency_table artifact"),
                          (notes, "not a JSON artifact")]:
        res = CliRunner().invoke(cli, ["run", "--bundle", str(bundle), "--requests", "3", "--json", str(target)])
        line = _one_line_error(res)
        assert str(target) in line and found in line and "--json" in line
    assert manifest.read_bytes() == before
    assert json.loads(table.read_text())["schema"] == "edgedyn.latency_table/1"
    assert notes.read_text() == "not json at all"


def test_run_json_replaces_a_report_and_an_old_report(bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"policy": "budget", "requests": 3, "subnets": []}))  # before reports had a schema
    for target in (old, old):  # the second time over a report of the current schema
        res = CliRunner().invoke(cli, ["run", "--bundle", str(bundle), "--requests", "3", "--json", str(target)])
        assert res.exit_code == 0, res.output
        rep = json.loads(target.read_text())
        assert rep["schema"] == "edgedyn.serve_report/1" and rep["partial"] is False and rep["requests"] == 3


# -- 2. Ctrl-C and SIGTERM: the partial report, then 130 / 143 -------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("sig, status, word", [(signal.SIGTERM, 143, "terminated"),
                                               (signal.SIGINT, 130, "interrupted")])
def test_run_interrupted_prints_and_writes_its_partial_report(bundle: Path, tmp_path: Path, sig: int, status: int,
                                                              word: str) -> None:
    out = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgedyn.cli", "run", "--bundle", str(bundle), "--duration", "120",
                             "--json", str(out)], env=ENV, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=sigint_default)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "serving ... for 120 s; ..." once the requests start
        assert line.startswith("serving "), line
        time.sleep(1.0)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, (stdout, stderr)
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1] == word, stderr
    assert stdout.startswith("partial report (interrupted): policy budget: "), stdout
    assert "(partial)" in stdout
    rep = json.loads(out.read_text())
    assert rep["partial"] is True and rep["requests"] > 0 and rep["wall_s"] < 60
    assert sum(s["count"] for s in rep["subnets"]) + rep["errors"] == rep["requests"]
    assert rep["overall_ms"]["p50"] > 0


def test_serve_returns_a_partial_report_on_keyboard_interrupt() -> None:
    sel = fake_selector()

    def budget(k: int, t: float) -> float:
        if k == 25:
            raise KeyboardInterrupt
        return 100.0

    rep = serve(sel, [X], requests=100, budget=budget, report_interrupt=True)
    assert rep.partial and isinstance(rep.interrupted, KeyboardInterrupt) and rep.requests == 25
    assert sum(rep.counts) == 25 and rep.to_dict()["partial"] is True
    with pytest.raises(KeyboardInterrupt):  # the library default: the interrupt propagates
        serve(sel, [X], requests=100, budget=budget)


# -- 3. bounded memory ---------------------------------------------------------------------
def test_reservoir_is_exact_on_short_runs_and_fixed_in_size_on_long_ones() -> None:
    rng = np.random.default_rng(3)
    short = rng.exponential(2.0, 700)
    s = LatencySummary(capacity=1000, seed=1)
    size = s.nbytes
    for v in short:
        s.add(float(v))
    exact = np.percentile(short, [50, 90, 99])
    assert s.exact and s.count == 700
    assert [s.percentiles()[k] for k in ("p50", "p90", "p99")] == [float(v) for v in exact]
    long = rng.exponential(2.0, 60_000)
    for v in long:
        s.add(float(v))
    assert s.count == 60_700 and not s.exact
    assert s.nbytes == size and len(s.sample) == 1000  # the container never grows
    everything = np.concatenate([short, long])
    for k, q in (("p50", 50), ("p90", 90)):  # a uniform sample of 1000: within a few percent
        assert abs(s.percentiles()[k] - np.percentile(everything, q)) < 0.12 * np.percentile(everything, q)
    # a uniform sample: the old values are not kept preferentially
    assert abs(np.mean(s.sample) - np.mean(everything)) < 0.2


def test_serve_percentiles_match_exact_ones_on_a_short_run() -> None:
    rep = serve(fake_selector(), [X], requests=400, budget=3.0, keep_timeline=True)
    lat = np.array([ms for _, _, ms, _ in rep.timeline])
    assert rep.exact and rep.overall == dict(zip(("p50", "p90", "p99"), map(float, np.percentile(lat, [50, 90, 99]))))
    for i, p in enumerate(rep.latency):
        mine = lat[[e[1] == i for e in rep.timeline]]
        assert (p is None) == (len(mine) == 0)
        if p is not None:
            assert p["p99"] == float(np.percentile(mine, 99))


def _serve_peak(requests: int) -> int:
    sel = fake_selector()
    tracemalloc.start()
    try:
        serve(sel, [X], requests=requests, budget=3.0, capacity=500)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_serve_memory_does_not_grow_with_the_number_of_requests() -> None:
    small, large = _serve_peak(1_000), _serve_peak(30_000)
    assert large - small < 100_000, (small, large)  # every latency kept would be > 900 KB more


def test_random_inputs_come_in_the_model_dtype_without_float64_copies() -> None:
    shape = (1, 3, 256, 256)
    tracemalloc.start()
    try:
        x = load_inputs(None, shape, dtype=np.float32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert x.dtype == np.float32 and x.shape == (64, *shape)
    assert peak < 1.1 * x.nbytes, (peak, x.nbytes)  # float64 then float32 would be 3x
    assert load_inputs(None, (1, 3, 8, 8), dtype=np.float16).dtype == np.float16
    assert load_inputs(None, (1, 3, 8, 8), dtype=np.int8).dtype == np.int8
    big = load_inputs(None, (1, 3, 1024, 1024), dtype=np.float32)  # 12 MiB each: not 64 of them
    assert big.nbytes <= 64 << 20 and len(big) >= 1


# -- 6. the schedule file ------------------------------------------------------------------
@pytest.mark.parametrize("text, needle", [
    ("[[0, 1" + "0" * 5000 + "]]", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("[[0, 1" + "0" * 400 + "]]", "too large"),
    ("[[1" + "0" * 400 + ", 1.0]]", "too large"),
])
def test_hostile_schedules_are_one_line_exit_2(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "s.json"
    p.write_text(text)
    with pytest.raises(EdgedynError, match=needle) as info:
        load_schedule(p)
    assert "\n" not in str(info.value) and str(p) in str(info.value)
    res = CliRunner().invoke(cli, ["run", "--bundle", str(tmp_path / "none"), "--requests", "3",
                                   "--schedule", str(p)])
    assert needle in _one_line_error(res)


# -- 5. a closed selector ------------------------------------------------------------------
def test_a_closed_selector_refuses_to_serve() -> None:
    sel = fake_selector()
    sel.infer(X, 3.0)
    sel.close()
    sel.close()  # idempotent
    assert sel.closed
    for call in (lambda: sel.infer(X, 3.0), sel.warmup, lambda: serve(sel, [X], requests=3)):
        with pytest.raises(SelectorClosed, match="closed") as info:
            call()
        assert "\n" not in str(info.value)
    assert sum(sel.stats()["counts"]) == 1  # the statistics stay readable
