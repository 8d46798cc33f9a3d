"""ONNX export of plain (extracted) models, checked against ONNX Runtime."""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import itertools
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import atomic_write_bytes

#: The exporter used is torch's torch.export-based one; it emits opset 18 natively.
DEFAULT_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints and warnings (they go to stdout/stderr)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "torch._dynamo")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_proto(module: torch.nn.Module, example: torch.Tensor, opset: int = DEFAULT_OPSET, where: object = "model") -> Any:
    """``module`` (eval mode, fixed input shape) as a checked ``onnx.ModelProto``, not written anywhere.

    The graph has one input named ``input`` and one output named ``output``; ``where`` names
    the model in errors.
    """
    if opset < 17:
        raise ValueError(f"opset {opset} is below the supported minimum 17")
    module = module.eval()
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            optimize=True,
        )
    import onnx

    if program is None:  # the dynamo exporter always returns a program; this keeps the type exact
        raise RuntimeError(f"torch.onnx.export returned no program for {where}")
    proto = program.model_proto
    onnx.checker.check_model(proto)
    return proto


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``module`` (eval mode, fixed input shape) to ``path`` atomically (:func:`export_proto`).

    The graph has one input named ``input`` and one output named ``output``.
    """
    return atomic_write_bytes(path, export_proto(module, example, opset, path).SerializeToString())


def _export_job(job: tuple[torch.nn.Module, torch.Tensor, Path]) -> Path:
    return export_onnx(*job)


USER_MODULE_PREFIX = "edgedyn_user_model_"  # how edgedyn.models.ref names a model file it imported


def _pack(job: tuple[torch.nn.Module, torch.Tensor, Path]) -> tuple[bytes, Path, tuple[tuple[str, str], ...]]:
    """A job as bytes: a module pickled for a worker process would hold a file descriptor
    per tensor for as long as it lives here (two hundred sub-nets ran out of them). Classes
    from a user's model file (``--model my_net.py:build``) are named with the file, which the
    worker imports under the same name before unpickling."""
    buf = io.BytesIO()
    torch.save((job[0], job[1]), buf)
    files = {type(m).__module__ for m in job[0].modules() if type(m).__module__.startswith(USER_MODULE_PREFIX)}
    named = tuple((n, str(getattr(sys.modules.get(n), "__file__", ""))) for n in sorted(files))
    return buf.getvalue(), job[2], named


def _import_user_files(named: tuple[tuple[str, str], ...]) -> None:
    import importlib.util

    for name, file in named:
        if name in sys.modules:
            continue
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16]
        if not name.startswith(f"{USER_MODULE_PREFIX}{digest}_"):
            raise RuntimeError(f"model file {file} changed while its sub-nets were exported")
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"model file {file} cannot be imported in an export worker")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(Path(file).parent))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(Path(file).parent))


def _export_packed(packed: tuple[bytes, Path, tuple[tuple[str, str], ...]]) -> Path:
    _import_user_files(packed[2])
    module, example = torch.load(io.BytesIO(packed[0]), weights_only=False)
    return export_onnx(module, example, packed[1])


def _worker_init() -> None:
    # Ctrl-C reaches the whole process group; the parent handles it and tears the pool down
    # (a worker that raised KeyboardInterrupt would print a traceback of its own)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)  # the workers share the cores; the exporter is mostly Python


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """While worker processes are started: SIGINT ignored, so they inherit it ignored (an
    ignored signal stays ignored across exec, and Python then installs no KeyboardInterrupt
    handler), quiet from their first import on; and blocked, so a Ctrl-C meanwhile is not
    lost but reaches this process as soon as the workers are started."""
    if (threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask")
            or signal.getsignal(signal.SIGINT) is None):  # a handler Python cannot restore: leave it be
        yield
        return
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


class _QuietSpawn:
    """A process pool whose ``submit`` (which starts workers on demand) passes SIGINT on ignored."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    def submit(self, fn: Callable, *args: Any) -> Any:
        with _children_ignore_sigint():
            return self.pool.submit(fn, *args)


def _bounded_map(pool: Any, fn: Callable, items: Iterable, in_flight: int) -> Iterator:
    """``pool.map(fn, items)`` in order, with at most ``in_flight`` items submitted at once
    (``items`` is consumed lazily, so packed jobs do not all sit in memory)."""
    it = iter(items)
    pending = collections.deque(pool.submit(fn, x) for x in itertools.islice(it, in_flight))
    while pending:
        done = pending.popleft().result()
        for x in itertools.islice(it, 1):
            pending.append(pool.submit(fn, x))
        yield done


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Any]:
    """A pool of ``workers`` spawned processes (``submit`` as in concurrent.futures) that
    Ctrl-C leaves quiet: the workers ignore SIGINT from their start; this process gets the
    KeyboardInterrupt, drops the queued jobs, lets the running ones end and re-raises."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked copy of a process that already ran torch ops can deadlock
    with _children_ignore_sigint():
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init)
    try:
        yield _QuietSpawn(pool)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def export_many(jobs: Sequence[tuple[torch.nn.Module, torch.Tensor, str | os.PathLike]],
                workers: int | None = None, progress: Callable[[], None] | None = None) -> list[Path]:
    """:func:`export_onnx` for many ``(module, example, path)`` jobs, in ``workers`` processes.

    The exporter takes 1-2 s per small network, almost all of it in Python, so the
    profiler's hundred-odd calibration sub-nets export about ``workers`` times faster this
    way. Default: one process per CPU core (sequential, in this process, for one job or core).
    ``progress`` is called after each export.
    """
    as_paths = [(m, x, Path(p)) for m, x, p in jobs]
    workers = min(workers or os.cpu_count() or 1, len(as_paths))
    with contextlib.ExitStack() as stack:
        results: Iterable[Path] = map(_export_job, as_paths)
        if workers > 1:
            pool = stack.enter_context(worker_pool(workers))
            results = _bounded_map(pool, _export_packed, map(_pack, as_paths), 2 * workers)
        paths = []
        for path in results:
            paths.append(path)
            if progress is not None:
                progress()
        return paths


def run_onnxruntime(path: str | os.PathLike, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an ONNX file once on the CPU with ONNX Runtime (used for equivalence checks)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]
