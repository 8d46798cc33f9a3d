"""Fuzzing the artifacts and the command line (issue 12): every mutation either loads and
gives finite, positive latencies, or fails with an EdgedynError of one line (exit status 2
from the CLI). Nothing else is raised, nothing hangs, and no file is written.

Mutated: a small latency table, a deployed bundle's ``manifest.json``, a search run's
``subnets.json`` (the builders are shared with test_validation), argument lists of
``edgedyn run`` and ``edgedyn inspect``, and data folders (issue 23: idx files, CIFAR-10
batches, imagefolder layouts with FIFOs, devices and symlink loops). A mutation changes, deletes or retypes fields,
inserts NaN, +-inf, negatives, huge values and wrong types, or truncates the file.

Hypothesis runs derandomized (a fixed seed; no example database), with a bounded example
count per property, so the suite is deterministic and fast (see EXAMPLES).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgedyn.artifacts import load_json
from edgedyn.cli import cli
from edgedyn.deploy import Manifest
from edgedyn.errors import EdgedynError
from edgedyn.profile import LatencyTable
from edgedyn.runtime import Selector
from test_validation import small_bundle, small_run_dir, small_table, table_net

EXAMPLES = {"table": 100, "manifest": 100, "search_result": 60, "cli_run": 80, "cli_inspect": 30,
            "data_idx": 40, "data_cifar": 30, "data_imagefolder": 25, "schedule": 80}


def fuzz_settings(name: str):
    return settings(derandomize=True, database=None, max_examples=EXAMPLES[name], deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- mutations of a JSON document -------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
VALUES: list[Any] = [NAN, INF, -INF, -1, -1.0, 0, 0.0, -1e-9, 1e-300, 1e300, 10 ** 30, 2 ** 63, 0.5, 1, 3,
                     "abc", "", "1.5", None, True, False, [], {}, [1, 2], {"a": 1}]
FACTORS = [-1.0, 0.0, 1e-12, 1e6, 1e300, -1e300]
Path_ = tuple


def doc_paths(doc: Any, prefix: Path_ = (), per_level: int = 4) -> list[Path_]:
    """Paths to every field of ``doc``, keeping the first ``per_level`` items of each
    object or list (a table has hundreds of interchangeable entries)."""
    out: list[Path_] = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k in list(doc)[:per_level] if len(doc) > 16 else list(doc):
            out += doc_paths(doc[k], prefix + (k,), per_level)
    elif isinstance(doc, list):
        for i in range(min(len(doc), per_level)):
            out += doc_paths(doc[i], prefix + (i,), per_level)
    return out


def _parent(doc: Any, path: Path_) -> tuple[Any, Any] | None:
    node = doc
    for k in path[:-1]:
        try:
            node = node[k]
        except (KeyError, IndexError, TypeError):
            return None
    last = path[-1]
    if isinstance(node, dict) and last in node or isinstance(node, list) and isinstance(last, int) \
            and last < len(node):
        return node, last
    return None


def mutate(doc: Any, ops: list[tuple]) -> Any:
    """Apply ``(kind, path, arg)`` operations to a deep copy of ``doc``; paths that no longer
    exist (a parent deleted or retyped before) are skipped."""
    doc = json.loads(json.dumps(doc))
    for kind, path, arg in ops:
        at = _parent(doc, path)
        if at is None:
            continue
        node, key = at
        value = node[key]
        if kind == "set":
            node[key] = arg
        elif kind == "delete":
            del node[key]
        elif kind == "scale":
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                try:
                    node[key] = value * arg
                except OverflowError:
                    node[key] = math.copysign(INF, arg)
        elif kind == "retype":
            node[key] = {"str": str(value), "list": [value], "bool": bool(value), "null": None,
                         "object": {"value": value}}[arg]
    return doc


def ops_strategy(paths: list[Path_]) -> st.SearchStrategy:
    path = st.sampled_from(paths)
    op = st.one_of(
        st.tuples(st.just("set"), path, st.sampled_from(VALUES)),
        st.tuples(st.just("scale"), path, st.sampled_from(FACTORS)),
        st.tuples(st.just("delete"), path, st.none()),
        st.tuples(st.just("retype"), path, st.sampled_from(["str", "list", "bool", "null", "object"])),
    )
    return st.lists(op, min_size=1, max_size=3)


def draw_mutant(data: Any, doc: Any, paths: Any, dst: Path) -> Path:
    """Draw mutations of ``doc`` (and maybe a truncation) and write the mutant to ``dst``."""
    ops = data.draw(ops_strategy(paths), label="ops")
    truncate = data.draw(TRUNCATE, label="truncate")
    write_mutant(dst, mutate(doc, ops), truncate)
    return dst


def write_mutant(dst: Path, doc: Any, truncate: float | None) -> None:
    # Python's json writes NaN / Infinity, as a careless tool would
    text = json.dumps(doc, allow_nan=True)
    if truncate is not None:
        text = text[: int(len(text) * truncate)]
    dst.write_text(text)


def listing(*dirs: Path) -> list[tuple[str, int, int]]:
    """Every file under ``dirs`` with its size and modification time."""
    out = []
    for d in dirs:
        for p in sorted(d.rglob("*")):
            st_ = p.stat()
            out.append((str(p), st_.st_size, st_.st_mtime_ns))
    return out


def one_line(err: EdgedynError) -> None:
    text = str(err)
    assert text and "\n" not in text, repr(text)


TRUNCATE = st.one_of(st.none(), st.none(), st.none(), st.floats(0.0, 0.999))


# -- latency tables -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table_case(tmp_path_factory):
    src = small_table(tmp_path_factory)
    doc = json.loads(src.read_text())
    net = table_net()
    specs = [net.min_spec(), net.full_spec(), net.random_spec(3)]
    # besides the first few of everything, the entries the predicted sub-nets use
    from edgedyn.profile import subnet_keys

    used = [k.to_str() for s in specs[:2] for k in subnet_keys(net, s)[:3]]
    paths = doc_paths(doc) + [("entries", k, f) for k in used for f in ("ms", "source", "n")] + \
        [("entries", k) for k in used]
    work = tmp_path_factory.mktemp("fuzz_table")
    return doc, sorted(set(paths), key=str), work, net, specs


@pytest.mark.timeout(120)
@fuzz_settings("table")
@given(data=st.data())
def test_fuzz_latency_table(table_case, data) -> None:
    doc, paths, work, net, specs = table_case
    path = draw_mutant(data, doc, paths, work / "table.json")
    before = listing(work)
    try:
        table = LatencyTable.load(path)
    except EdgedynError as err:
        one_line(err)
        event("table refused on load")
    else:
        for spec in specs:
            try:
                ms = table.predict(net, spec)
            except EdgedynError as err:  # a deleted entry, a prediction <= 0
                one_line(err)
                event("a prediction refused")
            else:
                assert isinstance(ms, float) and math.isfinite(ms) and ms > 0, ms
                event("a prediction made")
    assert listing(work) == before


# -- bundle manifests --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def manifest_case(tmp_path_factory):
    src = small_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("fuzz_manifest") / "bundle"
    shutil.copytree(src, work)
    doc = json.loads((work / "manifest.json").read_text())
    return doc, sorted(set(doc_paths(doc, per_level=3)), key=str), work


X = np.zeros((1, 3, 32, 32), np.float32)


@pytest.mark.timeout(120)
@fuzz_settings("manifest")
@given(data=st.data())
def test_fuzz_manifest(manifest_case, data) -> None:
    doc, paths, work = manifest_case
    ops = data.draw(ops_strategy(paths), label="ops")
    truncate = data.draw(TRUNCATE, label="truncate")
    policy = data.draw(st.sampled_from(["budget", "adaptive", "fixed"]), label="policy")
    write_mutant(work / "manifest.json", mutate(doc, ops), truncate)
    before = listing(work)
    try:
        Manifest.load(work)
        sel = Selector.load(work, policy)
    except EdgedynError as err:
        one_line(err)
        event(f"refused: {type(err).__name__}")
    else:
        event("loaded and served")
        with sel:
            expected = sel.expected_ms
            if policy != "fixed":
                assert all(isinstance(e, float) and math.isfinite(e) and e > 0 for e in expected), expected
            for budget in (None, 1e-3, 0.5, 1e6):
                out, info = sel.infer(X, budget)
                assert 0 <= info.subnet < len(expected) and np.isfinite(out).all()
                assert math.isfinite(info.latency_ms) and info.latency_ms >= 0
    assert listing(work) == before


# -- search results (subnets.json) ----------------------------------------------------------------
@pytest.fixture(scope="module")
def result_case(tmp_path_factory):
    """The run's subnets.json, and a copy of the run to mutate it in. The weights file is
    never mutated: deploy's loader gets the network built from it once (building traces the
    net, which takes a second on a busy 2-core machine)."""
    import edgedyn.deploy.source as run_mod
    from edgedyn.dynamic import DynamicNet

    src = small_run_dir(tmp_path_factory)
    work = tmp_path_factory.mktemp("fuzz_run") / "run"
    work.mkdir()
    shutil.copy(src / "weights.pt", work / "weights.pt")
    doc = json.loads((src / "subnets.json").read_text())
    net = DynamicNet.load(work / "weights.pt")

    class OnceLoaded:
        @staticmethod
        def load(path):
            assert Path(path) == work / "weights.pt"
            return net

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_mod, "DynamicNet", OnceLoaded)
        yield doc, sorted(set(doc_paths(doc)), key=str), work


@pytest.mark.timeout(120)
@fuzz_settings("search_result")
@given(data=st.data())
def test_fuzz_search_result(result_case, data) -> None:
    """The validator the loaders call (``validate_search_result``) refuses the document, or
    the deploy-side loader then reads finite, positive costs and accuracies in [0, 1]."""
    from edgedyn.deploy.source import load_run
    from edgedyn.search import RESULT_SCHEMA, load_result
    from edgedyn.validate import validate_search_result

    doc, paths, work = result_case
    path = draw_mutant(data, doc, paths, work / "subnets.json")
    before = listing(work)
    try:
        load_result(path)  # the search's loader: never anything but an EdgedynError
    except EdgedynError as err:
        one_line(err)
    try:
        validate_search_result(load_json(path, RESULT_SCHEMA), str(path))
        run = load_run(work)
    except EdgedynError as err:
        one_line(err)
        event("refused")
    else:
        event("loaded")
        for s in run.subnets:
            assert s.cost is None or (math.isfinite(s.cost) and s.cost > 0), s
            assert s.macs >= 0 and s.params >= 0
            for acc in (s.holdout_accuracy, s.test_accuracy):
                assert acc is None or 0.0 <= acc <= 1.0, s
            run.net.check_spec(s.spec)
    assert listing(work) == before


# -- the command line ------------------------------------------------------------------------------
NUMBERS = ["nan", "NaN", "inf", "-inf", "+Infinity", "1e999", "-1", "-3", "0", "-0", "0.0", "1e-300", "1e308",
           "100000", "2.5", "1", "2", "3", "16", "abc", "", " 4 ", "1_000", "0x10", "1e3", "5:0.5", "nan:0.3",
           "0:1", "2:inf", "4:", "1:2:3", "10:0.0001"]
# valid but large input sizes (1e3, 1_000) trace a net of 1000x1000 pixels: slow, not wrong
INSPECT_NUMBERS = [n for n in NUMBERS if n not in ("1e3", "1_000")] + ["1e1", "64.0"]
RUN_OPTIONS = ["--budget-ms", "--ramp", "--duration", "--requests", "--threads", "--subnet", "--quantile",
               "--policy", "--schedule"]
GOOD = {"--budget-ms": ["0.5", "3", "1e-300", "1e308", " 4 ", "2.5"],
        "--ramp": ["5:0.5", "10:0.0001", "1e308:1e-300", "2:2"],
        "--duration": ["0.001", "1e-300", "1e308", "2.5"],
        "--requests": ["1", "3", "16", "100000", "1e308"],
        "--threads": ["1", "2", "3", "100000"],
        "--subnet": ["0", "1", "2"],
        "--input-size": ["8", "16", "32", "64.0"],
        "--num-classes": ["1", "10", "100000"],
        "--channel-groups": ["1", "4", "8", "1_000"],
        "--group-size": ["1", "8", "16", "1e1"],
        "--min-groups": ["1", "2", "1_000"]}
SCHEDULE_NUMBERS = [0, 1, 2.5, -1, 0.0, NAN, INF, -INF, 1e308, "x", None, True, 10 ** 400, -(10 ** 400)]


@contextlib.contextmanager
def _chdir(path: str):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _check_cli(res, before, after) -> None:
    event(f"exit {res.exit_code}")
    assert res.exit_code in (0, 2), (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        errors = [ln for ln in res.output.splitlines() if ln.lower().startswith("error")]
        assert len(errors) == 1 and len(errors[0]) > len("error: "), res.output
    else:
        assert res.exception is None, res.exception
    assert after == before


@pytest.fixture(scope="module")
def run_case(tmp_path_factory):
    """The bundle, a folder for schedule files, and ``serve`` wrapped to check what reaches it
    and to cut a run short (a valid --requests 1e308 is legitimate, and would take forever)."""
    import edgedyn.runtime.serve as serve_mod

    bundle = small_bundle(tmp_path_factory)
    work = tmp_path_factory.mktemp("fuzz_cli")
    real_serve = serve_mod.serve
    real_warmup = Selector.warmup

    def checked_serve(selector, inputs, *, requests=None, duration_s=None, budget=None, keep_timeline=False,
                      **kw):
        assert (requests is None) != (duration_s is None)
        if requests is not None:
            assert isinstance(requests, int) and requests >= 1
        else:
            assert isinstance(duration_s, float) and math.isfinite(duration_s) and duration_s > 0
        total = requests if requests is not None else duration_s
        for k in (0, 1, total / 2, total, 2 * total):  # the budget over the whole run, and past it
            k = min(k, 1e300)
            b = budget(int(k), float(k)) if callable(budget) else budget
            assert b is None or (math.isfinite(b) and b > 0), b
        return real_serve(selector, inputs, requests=None if requests is None else min(requests, 4),
                          duration_s=None if duration_s is None else min(duration_s, 0.005), budget=budget, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serve_mod, "serve", checked_serve)
        mp.setattr(Selector, "warmup", lambda self, calls=50: real_warmup(self, 1))
        yield bundle, work


@pytest.mark.timeout(180)
@fuzz_settings("cli_run")
@given(data=st.data())
def test_fuzz_cli_run(run_case, data) -> None:
    bundle, work = run_case
    args = ["run", "--bundle", str(bundle)]
    options = data.draw(st.lists(st.sampled_from(RUN_OPTIONS), min_size=1, max_size=4), label="options")
    for opt in options:
        if opt == "--schedule":
            rows = data.draw(st.lists(st.lists(st.sampled_from(SCHEDULE_NUMBERS), min_size=1, max_size=3),
                                      max_size=3), label="schedule")
            (work / "schedule.json").write_text(json.dumps(rows, allow_nan=True))
            args += [opt, str(work / "schedule.json")]
        elif opt == "--quantile":
            args += [opt, data.draw(st.sampled_from(["p99", "p90", "median", "p50", "nan"]), label="quantile")]
        elif opt == "--policy":
            args += [opt, data.draw(st.sampled_from(["budget", "fixed", "adaptive", "fast"]), label="policy")]
        else:  # half the time a value the option takes, so that runs get through too
            pool = st.one_of(st.sampled_from(NUMBERS), st.sampled_from(GOOD[opt]))
            args += [opt, data.draw(pool, label=opt)]
    if data.draw(st.integers(0, 4), label="drop a value") == 0:  # an option missing its value
        args = args[:-1]
    before = listing(bundle, work)
    res = CliRunner().invoke(cli, args)
    _check_cli(res, before, listing(bundle, work))


@pytest.mark.timeout(120)
@fuzz_settings("cli_inspect")
@given(data=st.data())
def test_fuzz_cli_inspect(data) -> None:
    args = ["inspect", "--model", "resnet20"]
    options = data.draw(st.lists(st.sampled_from(["--input-size", "--num-classes", "--channel-groups",
                                                  "--group-size", "--min-groups"]), min_size=1, max_size=3),
                        label="options")
    for opt in options:
        pool = st.one_of(st.sampled_from(INSPECT_NUMBERS), st.sampled_from(GOOD[opt]))
        args += [opt, data.draw(pool, label=opt)]
    if data.draw(st.booleans(), label="json"):
        args.append("--json")
    with tempfile.TemporaryDirectory() as cwd, _chdir(cwd):
        before = listing(Path(cwd))
        res = CliRunner().invoke(cli, args)
        _check_cli(res, before, listing(Path(cwd)))


# -- data folders (idx, CIFAR-10, imagefolder) ---------------------------------------------------
def data_listing(root: Path) -> list[tuple[str, int, int, int]]:
    """Every entry under ``root``, links not followed (a folder may hold a symlink loop)."""
    out = []
    for folder, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            st_ = os.lstat(os.path.join(folder, name))
            out.append((os.path.join(folder, name), st_.st_mode, st_.st_size, st_.st_mtime_ns))
    return sorted(out)


def _loads_or_one_line(spec: str, root: Path, drain: bool = False) -> None:
    """``load_data(spec)`` loads (and every batch can be read) or fails with one EdgedynError
    line; nothing under ``root`` is written."""
    from edgedyn.data import load_data, make_loader

    before = data_listing(root)
    try:
        splits = load_data(spec, 16, holdout_fraction=0.25)
        if drain:
            for ds in (splits.train, splits.holdout, splits.test):
                for _ in make_loader(ds, 8, shuffle=False):
                    pass
    except EdgedynError as err:
        one_line(err)
        event(f"refused: {str(err).replace(str(root), '')[:48]}")
    else:
        assert splits.num_classes >= 1 and len(splits.test) >= 1
        event("loaded")
    assert data_listing(root) == before


ODD_ENTRIES = ["fifo", "dir", "loop", "dangling", "devnull", "empty"]


def _odd_entry(path: Path, kind: str) -> None:
    """Replace ``path`` by something that is no regular file of the expected kind."""
    if path.exists() or path.is_symlink():
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        path.mkdir()
    elif kind == "loop":
        path.symlink_to(path.name)
    elif kind == "dangling":
        path.symlink_to(path.with_name("absent"))
    elif kind == "devnull":
        path.symlink_to("/dev/null")
    else:
        path.write_bytes(b"")


DIMS = [0, 1, 2, 27, 28, 29, 2 ** 16, 2 ** 31, 2 ** 32 - 1]


@pytest.mark.timeout(120)
@fuzz_settings("data_idx")
@given(data=st.data())
def test_fuzz_idx_folder(data) -> None:
    import gzip

    from edgedyn.data.idx import IDX_FILES
    from test_data_sources import write_idx_set

    gz = data.draw(st.booleans(), label="gzip")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_idx_set(root, gz=False, n_train=30, n_test=10)
        for key in data.draw(st.lists(st.sampled_from(sorted(IDX_FILES)), min_size=1, max_size=2, unique=True),
                             label="files"):
            path = root / IDX_FILES[key]
            raw = bytearray(path.read_bytes())
            op = data.draw(st.sampled_from(["none", "dim", "byte", "truncate", "append", "odd"]), label="op")
            if op == "dim":  # a header dimension set to an extreme
                i = data.draw(st.integers(0, 3 if "images" in key else 1), label="dim")
                raw[4 + 4 * i: 8 + 4 * i] = data.draw(st.sampled_from(DIMS), label="value").to_bytes(4, "big")
            elif op == "byte":
                raw[data.draw(st.integers(0, 15), label="at")] = data.draw(st.integers(0, 255), label="to")
            elif op == "truncate":
                raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="keep")]
            elif op == "append":
                raw += bytes(data.draw(st.integers(1, 5000), label="extra"))
            if op == "odd":
                _odd_entry(path, data.draw(st.sampled_from(ODD_ENTRIES), label="entry"))
            else:
                path.write_bytes(bytes(raw))
        if gz:
            for path in root.iterdir():
                if path.is_file() and not path.is_symlink() and path.stat().st_size:
                    path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
                    path.unlink()
        _loads_or_one_line(f"idx:{root}", root)


CIFAR_LABELS: list[Any] = [None, "abc", 3, 1.5, [], [1.5] * 20, [True] * 20, [-1] * 20, [10] * 20, [2 ** 70] * 20,
                           [[1]] * 20, list(range(10)), b"\x01" * 20, {"a": 1}, np.arange(20) % 10,
                           np.zeros(20, np.float32), list(range(10)) * 2]
CIFAR_DATA: list[Any] = [None, "abc", [], [[1, 2]], np.zeros((20, 3072), np.float32), np.zeros((20, 3071), np.uint8),
                         np.zeros((19, 3072), np.uint8), np.zeros((20, 3, 32, 32), np.uint8),
                         np.zeros((20, 3072), np.uint8)]


@pytest.mark.timeout(120)
@fuzz_settings("data_cifar")
@given(data=st.data())
def test_fuzz_cifar_folder(data) -> None:
    import pickle

    from edgedyn.data import CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES

    names = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(0)
        for name in names:
            batch = {b"labels": list(range(10)) * 2, b"data": rng.integers(0, 255, (20, 3072), dtype=np.uint8)}
            (root / name).write_bytes(pickle.dumps(batch, protocol=4))
        for name in data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True), label="files"):
            batch = {b"labels": list(range(10)) * 2, b"data": np.zeros((20, 3072), np.uint8)}
            op = data.draw(st.sampled_from(["none", "labels", "data", "drop", "top", "truncate", "odd"]), label="op")
            if op == "labels":
                batch[b"labels"] = data.draw(st.sampled_from(CIFAR_LABELS), label="labels")
            elif op == "data":
                batch[b"data"] = data.draw(st.sampled_from(CIFAR_DATA), label="data")
            elif op == "drop":
                del batch[data.draw(st.sampled_from([b"labels", b"data"]), label="key")]
            blob = pickle.dumps([batch] if op == "top" else batch, protocol=data.draw(st.integers(3, 5), label="protocol"))
            if op == "truncate":
                blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="keep")]
            if op == "odd":
                _odd_entry(root / name, data.draw(st.sampled_from(ODD_ENTRIES), label="entry"))
            else:
                (root / name).write_bytes(blob)
        _loads_or_one_line(f"cifar10:{root}", root)


IMAGE_ENTRIES = ["png"] * 8 + ["garbage", "empty", "fifo", "devnull", "loop", "dangling", "dirloop", "tiny", "txt"]


@pytest.mark.timeout(120)
@fuzz_settings("data_imagefolder")
@given(data=st.data())
def test_fuzz_imagefolder(data) -> None:
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for split, least in (("train", 2), ("val", 1)):
            (root / split).mkdir()
            for cls in data.draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True),
                                 label=f"{split} classes"):
                folder = root / split / cls
                folder.mkdir()
                kinds = data.draw(st.lists(st.sampled_from(IMAGE_ENTRIES), min_size=least, max_size=5),
                                  label="entries")
                for i, kind in enumerate(kinds):
                    path = folder / (f"{i}.txt" if kind == "txt" else f"{i}.png")
                    if kind in ("png", "txt", "tiny"):
                        side = 1 if kind == "tiny" else 10
                        Image.new("RGB", (side, side), (i * 30, 0, 0)).save(path, format="PNG")
                    elif kind == "garbage":
                        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
                    elif kind == "dirloop":
                        (folder / f"up{i}").symlink_to(folder)
                    else:
                        _odd_entry(path, kind)
        _loads_or_one_line(f"imagefolder:{root}", root, drain=True)


# -- schedule files: hostile JSON text (issue 23) -------------------------------------------------
SCHEDULE_ATOMS = ["0", "1", "2.5", "-1", "1e999", "NaN", "Infinity", '"x"', "null", "true", "[]", "{}",
                  "1" + "0" * 5000, "1" + "0" * 400, "0." + "0" * 5000 + "1"]


@pytest.mark.timeout(120)
@fuzz_settings("schedule")
@given(data=st.data())
def test_fuzz_schedule_file(tmp_path_factory, data) -> None:
    from edgedyn.runtime.serve import load_schedule

    depth = data.draw(st.sampled_from([0, 1, 2, 50, 5000, 200_000]), label="depth")
    rows = data.draw(st.lists(st.lists(st.sampled_from(SCHEDULE_ATOMS), max_size=3), max_size=4), label="rows")
    text = "[" * depth + "[" + ",".join("[" + ",".join(r) + "]" for r in rows) + "]" + "]" * depth
    if data.draw(st.booleans(), label="truncate"):
        text = text[:data.draw(st.integers(0, len(text)), label="cut")]
    path = tmp_path_factory.mktemp("sched") / "s.json"
    path.write_text(text)
    try:
        out = load_schedule(path)
    except EdgedynError as err:
        assert "\n" not in str(err) and str(path) in str(err), str(err)
        event("refused")
        return
    assert out and all(math.isfinite(a) and a >= 0 and math.isfinite(b) and b > 0 for a, b in out)
    event("loaded")


# == weights.pt configs and checkpoint.pt files (issue 23) =====================================
# A tampered weights file (its config, its tensors) or checkpoint (its settings, state and
# tensors) loads, or fails with one EdgedynError line; never a traceback, never a file written.
# The loaders run in-process on a network built once; a few cases go through the command line.
import sys as _sys  # noqa: E402

import torch  # noqa: E402

EXAMPLES.update({"weights": 30, "checkpoint": 30, "cli_checkpoint": 4})
TENSOR_EDITS = st.lists(st.tuples(st.sampled_from(["shape", "nan", "inf", "delete", "retype", "extra", "scalar"]),
                                  st.integers(0, 10 ** 6)), max_size=3)
FOREIGN = [[1, 2, 3], "checkpoint", 7, None, torch.zeros(3), {"schema": 1}, {}]
SMALL_NET = {"num_classes": 10, "input_size": 8, "channel_groups": 2}


def edit_tensors(tensors: dict, edits: list[tuple[str, int]]) -> dict:
    """``tensors`` with each edit applied to the tensor its number picks."""
    out = dict(tensors)
    for kind, pick in edits:
        if not out:
            break
        key = list(out)[pick % len(out)]
        t = out[key]
        if kind == "delete":
            del out[key]
        elif kind == "extra":
            out[f"extra{pick}.weight"] = torch.zeros(2)
        elif not isinstance(t, torch.Tensor):
            continue
        elif kind == "shape":
            out[key] = torch.zeros(t.numel() + 1)
        elif kind in ("nan", "inf") and t.is_floating_point() and t.numel():
            out[key] = t.clone().fill_(NAN if kind == "nan" else -INF)
        elif kind == "retype":
            out[key] = t.flatten()[:8].tolist()
        elif kind == "scalar":
            out[key] = torch.tensor(1.0)
    return out


def save_mutant(data: Any, obj: Any, dst: Path) -> None:
    """``torch.save`` ``obj`` to ``dst``, or a foreign object instead, maybe truncated."""
    import io

    if data.draw(st.integers(0, 9), label="foreign") == 0:
        obj = data.draw(st.sampled_from(FOREIGN), label="foreign object")
    buf = io.BytesIO()
    torch.save(obj, buf)
    raw = buf.getvalue()
    truncate = data.draw(TRUNCATE, label="truncate")
    dst.write_bytes(raw if truncate is None else raw[: int(len(raw) * truncate)])


@pytest.fixture(scope="module")
def weights_case(tmp_path_factory):
    from edgedyn.dynamic import DynamicNet

    work = tmp_path_factory.mktemp("fuzz_weights")
    net = DynamicNet.from_name("resnet20", **SMALL_NET)
    blob = torch.load(net.save(work / "good.pt"), weights_only=True)
    (work / "good.pt").unlink()
    return net, blob, sorted(set(doc_paths(blob["config"])), key=str), work


@pytest.mark.timeout(120)
@fuzz_settings("weights")
@given(data=st.data())
def test_fuzz_weights_file(weights_case, data) -> None:
    """As ``--weights`` (the search's loader) and as a run's ``weights.pt`` (``load_net``)."""
    from edgedyn.search.weights import load_weights_into
    from edgedyn.validate_weights import load_net

    net, blob, paths, work = weights_case
    config = mutate(blob["config"], data.draw(ops_strategy(paths), label="config ops"))
    mutant = {**blob, "config": config, "state_dict": edit_tensors(blob["state_dict"], data.draw(TENSOR_EDITS))}
    if data.draw(st.booleans(), label="bn_stats"):
        mutant["bn_stats"] = data.draw(st.sampled_from([{"[8]": {"bn1": [1]}}, {"x": 1}, [1], {"[8]": {}}, None]))
    path = work / "weights.pt"
    save_mutant(data, mutant, path)
    before = listing(work)
    for load in (lambda: load_weights_into(net, path), lambda: load_net(path)):
        try:
            load()
        except EdgedynError as err:
            one_line(err)
            event("refused")
        else:
            event("loaded")
    assert listing(work) == before


@pytest.fixture(scope="module")
def checkpoint_case(tmp_path_factory):
    """A run's context (built once, as a search builds it) and a checkpoint it saved after a
    step of SGD with momentum (so the optimizer state holds tensors), to mutate in place."""
    from test_search import MockLatency, small_config

    from edgedyn.search import train as T
    from edgedyn.search.dist import current
    from edgedyn.search.pipeline import start

    config = small_config(tmp_path_factory.mktemp("fuzz_ckpt") / "run", method="usnet", budgets="0.7,1.0",
                          data="synthetic", data_limit=64)
    ctx = start(config, MockLatency(), current()).ctx
    opt = T.make_sgd(ctx.net, 0.1, weight_decay=0.0, extra=[])
    for p in ctx.net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    ctx.save("pretrain", 1, opt)
    blob = torch.load(ctx.ckpt_path, weights_only=True)
    doc = {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer", "alphas")}
    json.dumps(doc)  # the settings and state are plain JSON; the tensors are edited apart
    return ctx, blob, doc, sorted(set(doc_paths(doc)), key=str)


@pytest.mark.timeout(120)
@fuzz_settings("checkpoint")
@given(data=st.data())
def test_fuzz_checkpoint_file(checkpoint_case, data) -> None:
    """A resumed run's checkpoint: its settings, state, weights and optimizer state."""
    from edgedyn.search import train as T

    ctx, blob, doc, paths = checkpoint_case
    mutant = {**blob, **mutate(doc, data.draw(ops_strategy(paths), label="ops")),
              "state_dict": edit_tensors(blob["state_dict"], data.draw(TENSOR_EDITS, label="tensors"))}
    if data.draw(st.integers(0, 3), label="optimizer") == 0:
        mutant["optimizer"] = data.draw(st.sampled_from([None, [], {}, {"state": {}, "param_groups": []}, "x"]))
    save_mutant(data, mutant, ctx.ckpt_path)
    before = listing(ctx.out)
    try:
        ctx.load()
        if ctx.state.optimizer is not None:
            ctx._restore(T.make_sgd(ctx.net, 0.1, weight_decay=0.0, extra=[]), ctx.state.optimizer)
    except EdgedynError as err:
        one_line(err)
        event("refused")
    else:
        event("loaded")
    assert listing(ctx.out) == before


@pytest.fixture(scope="module")
def cli_checkpoint_case(tmp_path_factory):
    """``edgedyn search ... --resume`` on a checkpoint the command itself wrote (its run stopped
    at the first checkpoint); the pipeline's phases stand in for a stub that ends the command
    once the run is loaded."""
    import edgedyn.search.pipeline as pipeline

    run = tmp_path_factory.mktemp("fuzz_cli_ckpt") / "run"
    args = ["search", "--data", "synthetic", "--data-limit", "64", "--input-size", "8", "--channel-groups", "2",
            "--cost", "flops", "--method", "usnet", "--budgets", "0.7,1.0", "--out", str(run)]

    def stop_at_first_checkpoint(method):
        method.ctx.save(method.ctx.phases[0], 1)
        _sys.exit(0)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run", stop_at_first_checkpoint)
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0 and (run / "checkpoint.pt").is_file(), res.output
        blob = torch.load(run / "checkpoint.pt", weights_only=True)
        doc = {k: v for k, v in blob.items() if k not in ("state_dict", "optimizer", "alphas")}
        mp.setattr(pipeline, "run", lambda method: _sys.exit(0))  # loaded: the command would go on
        yield [*args, "--resume"], run, blob, doc, sorted(set(doc_paths(doc)), key=str)


@pytest.mark.timeout(120)
@fuzz_settings("cli_checkpoint")
@given(data=st.data())
def test_fuzz_cli_search_resume(cli_checkpoint_case, data) -> None:
    args, run, blob, doc, paths = cli_checkpoint_case
    mutant = {**blob, **mutate(doc, data.draw(ops_strategy(paths), label="ops")),
              "state_dict": edit_tensors(blob["state_dict"], data.draw(TENSOR_EDITS, label="tensors"))}
    save_mutant(data, mutant, run / "checkpoint.pt")
    before = listing(run)
    res = CliRunner().invoke(cli, args)
    event(f"exit {res.exit_code}")
    assert res.exit_code in (0, 2) and "Traceback" not in res.output, (res.output, res.exception)
    if res.exit_code == 2:
        _check_cli(res, before, listing(run))
