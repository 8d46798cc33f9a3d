"""``run_search``: the whole pipeline, checkpointed and resumable, for any registered method.

1. the method's phases in order (``pretrain``, then e.g. ``rank``/``supernet`` and
   ``search``), each skipping what the checkpoint already holds;
2. the method's selection, one pick per budget;
3. ``train``: the method's joint training of the chosen sub-nets;
4. ``final``: per-sub-net BN recalibration, holdout and test accuracy, the outputs
   (``subnets.json``, ``weights.pt``, ``accuracy_latency.png``).

The cost model that steers the search and the one that prices budgets may differ (a
search steered by MACs, its picks chosen by a latency table): ``select_cost``. A
checkpoint is written atomically after every epoch and every search step; a resumed run
gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from ..artifacts import atomic_write_json
from ..cost import CostModel
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import EdgedynError
from ..locks import exclusive_lock
from . import train
from .config import SearchConfig
from .context import Hook, RunContext, ScorerFactory
from .dist import Dist, current
from .methods.base import Method, Picks
from .registry import get_method
from .result import RESULT_SCHEMA, ChosenSubnet, SearchResult
from .scorer import Scorer
from .weights import load_weights_into

log = logging.getLogger("edgedyn.search")


def start(config: SearchConfig, cost_model: CostModel, dist: Dist, hook: Hook | None = None,
          select_cost: CostModel | None = None, scorer: ScorerFactory = Scorer) -> Method:
    """The run's context and method, every input checked, a resumed run's checkpoint loaded
    (nothing written yet)."""
    cls = cast("type[Method]", get_method(config.method))
    options = config.method_options()
    ctx = RunContext(config, cost_model, dist, hook, select_cost, phases=(*cls.phases, "train", "final"),
                     scorer=scorer)
    method = cls(ctx, options)
    method.check_budgets()
    if config.resume:  # the checkpoint is an input too: checked before the run directory is touched
        ctx.load()
    return method


def run(method: Method) -> SearchResult:
    """Run the method's phases (from where a resumed checkpoint left off), select, train,
    measure and write the outputs."""
    ctx = method.ctx
    if ctx.c.resume and ctx.resumed:
        log.info("resumed at phase %s, unit %d", ctx.state.phase, ctx.state.index)
    elif not ctx.c.resume and ctx.ckpt_path.exists() and ctx.dist.is_main:  # --overwrite
        ctx.ckpt_path.unlink()
    ctx.dist.barrier()
    if ctx.c.weights and ctx.state.phase == "pretrain" and ctx.state.index == 0:
        load_weights_into(ctx.net, ctx.c.weights)
        ctx.save(ctx.phases[1], 0)
    for phase in method.phases:
        getattr(method, phase)()
    picks = method.select()
    method.before_train(picks)
    method.train(sorted({p.spec for _, p in picks}, key=lambda s: sum(s.widths)))
    ctx.advance("train")
    with ctx.timed("final"):
        subnets = measure(ctx, picks, method)
    s = ctx.state
    # weights.pt: the network serving the largest budget's pick (for a method that shares
    # weights, the run's one network; picks with networks of their own are saved beside it)
    result = SearchResult(ctx.c, method.net_for(picks[-1][1].spec), ctx.select_cost.name, ctx.select_cost.unit,
                          ctx.select_full, subnets, list(s.path), list(s.steps), ctx.out, dict(s.timings),
                          [g.to_result() for g in s.legs])
    if ctx.dist.is_main:
        own = {sub.weights: (method.net_for(sub.spec), sub.spec) for sub in subnets if sub.weights}
        write_outputs(result, own)
    ctx.dist.barrier()
    return result


def measure(ctx: RunContext, picks: Picks, method: Method | None = None) -> list[ChosenSubnet]:
    """Each pick's BN statistics recalibrated, its holdout and test accuracy (on the network
    that serves it: ``method.net_for``)."""
    c = ctx.c
    nets: dict[int, DynamicNet] = {}
    ctx.seed("final", 0)
    calib = train.take_batches(ctx.train_loader("final", 0), c.calib_batches)
    measured: dict[SubnetSpec, tuple[float, float]] = {}
    subnets = []
    for budget, point in picks:
        spec = point.spec
        net = method.net_for(spec) if method is not None else ctx.net
        nets[id(net)] = net
        if spec not in measured:
            net.calibrate_bn(spec, calib, c.calib_batches)
            measured[spec] = (train.accuracy(net, spec, ctx.splits.holdout, ctx.device),
                              train.accuracy(net, spec, ctx.splits.test, ctx.device))
        hold, test = measured[spec]
        before = next((s.before_train for s in ctx.state.selection or [] if s.budget == budget.text), None)
        own = method.weights_file(spec) if method is not None else None
        subnets.append(ChosenSubnet(budget, spec, point.cost, net.macs(spec), net.params(spec), hold, test, before,
                                    weights=own))
        log.info("budget %s: %s cost %.4g %s, holdout %.4f, test %.4f", budget.text, spec, point.cost,
                 ctx.select_cost.unit, hold, test)
    for net in list(nets.values()) or [ctx.net]:
        net.set_subnet(net.full_spec())
    return subnets


def write_outputs(result: SearchResult, own: Mapping[str, tuple[DynamicNet, SubnetSpec]] | None = None) -> None:
    """``subnets.json``, ``weights.pt`` and ``accuracy_latency.png`` in the run directory; a
    pick served by a network of its own (``own``: file name -> (network, pick)) is saved there too."""
    from .plot import plot

    out = Path(result.out_dir or result.config.out)
    doc = result.to_dict()
    for name, (net, spec) in (own or {}).items():
        net.save(out / name, extra={"search_result": RESULT_SCHEMA, "subnets": [list(spec.widths)]})
    result.net.save(out / "weights.pt", extra={"search_result": RESULT_SCHEMA,
                                               "subnets": [s.to_dict()["widths"] for s in result.subnets]})
    atomic_write_json(out / "subnets.json", doc)
    try:
        plot(doc, out / "accuracy_latency.png", [Path(p) for p in result.config.compare])
    except ImportError:
        log.warning("matplotlib is not installed; no plot")


def check_out_dir(out: Path) -> None:
    """One-line error, before anything is written, when ``out`` cannot be a run directory."""
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == out else f"has a file {p} in its path"
                raise EdgedynError(f"--out {out}: {what}, not a directory")
            break


#: What a search writes in its run directory: one of them there means an earlier run is.
RUN_FILES = ("checkpoint.pt", "search.log", "subnets.json", "weights.pt")


def check_fresh_run(out: Path, config: SearchConfig) -> None:
    """Refuse (one line) to start a fresh run over an earlier one in ``out`` unless the
    config says ``resume`` (continue it) or ``overwrite`` (replace it)."""
    if config.resume and config.overwrite:
        raise EdgedynError("give --resume or --overwrite, not both")
    if config.resume or config.overwrite or not out.is_dir():
        return
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found:
        raise EdgedynError(f"--out {out}: an earlier search run is there ({', '.join(found)}); continue it with "
                           "--resume or replace it with --overwrite")


def run_search(config: SearchConfig, cost_model: CostModel, *, dist: Dist | None = None,
               hook: Hook | None = None, select_cost: CostModel | None = None,
               scorer: ScorerFactory = Scorer) -> SearchResult:
    """Run (or resume) a search and write its outputs to ``config.out``.

    Every input (settings, data, weights, table, budgets) is checked before anything in
    ``config.out`` is touched: a failed start leaves an earlier run's checkpoint and log as
    they were. A run directory holding an earlier run is refused unless ``config.resume``
    or ``config.overwrite``; the run holds an exclusive lock on it throughout
    (:func:`~edgedyn.locks.exclusive_lock`: a second search into it is refused at once).

    Args:
        config: the run's settings (``config.method`` names a registered method).
        cost_model: steers the search (:class:`~edgedyn.cost.LatencyCost`, :class:`~edgedyn.cost.FlopsCost`).
        dist: the data-parallel job (default: the initialised process group, if any).
        hook: called as ``hook(phase, index)`` after every checkpoint (tests interrupt here).
        select_cost: prices the budgets and the picks (default: ``cost_model``), e.g. a latency
            table for a search steered by MACs.
        scorer: builds the run's :class:`~edgedyn.search.scorer.Scorer` from ``(net, splits,
            device)`` (a subclass to count or alter scorings; default: :class:`Scorer`).
    """
    dist = dist or current()
    out = Path(config.out)
    check_out_dir(out)
    lock = exclusive_lock(out, "search run directory") if dist.is_main else contextlib.nullcontext()
    with lock:
        check_fresh_run(out, config)
        dist.barrier()  # every rank has checked before rank 0 writes anything
        if config.select_cost is None and select_cost is not None and select_cost is not cost_model:
            config.select_cost = select_cost.name
        method = start(config, cost_model, dist, hook, select_cost, scorer)
        handler = None
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(out / "search.log", mode="a" if config.resume else "w")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            handler.setLevel(logging.DEBUG)
            log.addHandler(handler)
            log.setLevel(logging.DEBUG)
        try:
            if dist.is_main:
                log.debug("search: %s", config.to_dict())
            return run(method)
        finally:
            if handler is not None:
                log.removeHandler(handler)
                handler.close()


def pretrain_only(config: SearchConfig, path: str | Path) -> Path:
    """Pre-train the full model as ``run_search`` would and save it (shared start for comparisons)."""
    from ..cost import FlopsCost

    cfg = SearchConfig(**{**config.to_dict(), "budgets": "1.0", "resume": False, "weights": None,
                          "compare": tuple(config.compare)})
    method = start(cfg, FlopsCost(), current())
    method.pretrain()
    method.net.set_subnet(method.net.full_spec())
    return method.net.save(path)
