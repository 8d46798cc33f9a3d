"""``edgedyn search``: a thin click command over :func:`edgedyn.search.run_search`.

Registered by ``edgedyn.cli`` (``cli.add_command(search)``); every expected failure is an
:class:`~edgedyn.errors.EdgedynError`, which the CLI group prints as one line (exit 2).
Under ``torchrun --nproc_per_node N`` the run is data parallel; rank 0 writes the outputs.
``--method`` takes every registered method (:mod:`edgedyn.search.registry`).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from ..cli_types import CHANNEL_GROUPS, EPOCHS, INPUT_SIZE, MODEL_HELP, NONNEG_INT, POSITIVE_INT, SEED, FiniteFloat, Int
from ..cost import CostModel
from ..errors import EdgedynError
from .registry import get_method, method_names


def _parse_options(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for text in values:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{text!r} is not KEY=VALUE", ctx, param)
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


def _summary(name: str) -> str:
    """A method's one-line description: its class docstring's first line, less the full stop."""
    doc = (get_method(name).__doc__ or "").strip().splitlines()
    return doc[0][:1].lower() + doc[0][1:].rstrip(".") if doc else name


OPTIONS = [
    click.option("--model", default="resnet20", show_default=True, help=MODEL_HELP),
    click.option("--data", default="digits", show_default=True,
                 help="digits | synthetic | fashion-mnist[:DIR] | idx:DIR | cifar10:DIR | imagefolder:DIR."),
    click.option("--data-limit", type=POSITIVE_INT, default=None, help="Use at most this many training samples."),
    click.option("--input-size", type=INPUT_SIZE, default=None, help="Input height = width (model default if omitted)."),
    click.option("--budget-table", "table_path", default=None, type=click.Path(dir_okay=False),
                 help="Latency table (edgedyn profile): prices the budgets and the picks; with --cost latency "
                      "it also steers the search."),
    click.option("--budgets", default="0.25,0.5,0.75,1.0", show_default=True,
                 help="Fractions of the full model's cost, or absolute costs such as '3ms,5ms'."),
    click.option("--cost", "cost_name", type=click.Choice(["latency", "flops"]), default="latency", show_default=True,
                 help="What steers the search. With --cost flops and a --budget-table, the budgets are still "
                      "latencies priced by the table."),
    click.option("--method", type=click.Choice(method_names()), default="autoslim", show_default=True,
                 help="; ".join(f"{name}: {_summary(name)}" for name in method_names()) + "."),
    click.option("--criterion", type=click.Choice(["ratio", "drop"]), default="ratio", show_default=True,
                 help="progressive: keep the removal with the least accuracy lost per cost saved (ratio), or "
                      "the least accuracy lost (drop, the paper's)."),
    click.option("--final-epochs", type=NONNEG_INT, default=None,
                 help="autoslim: the last of the --train-epochs train the chosen sub-nets only "
                      "[default: a third of --train-epochs, at least 1 when there are 2 or more; 0: none]."),
    click.option("--direction", type=click.Choice(["slim", "grow"]), default="slim", show_default=True,
                 help="autoslim: slim from the full model down to each budget, above the previous budget's pick "
                      "(AutoSlim's direction), or grow each budget's best candidate up to it (cheaper)."),
    click.option("--slim-step", type=FiniteFloat(min=0.0, max=1.0, min_open=True, max_open=True), default=0.05,
                 show_default=True,
                 help="autoslim: cost each greedy step adds or removes, a fraction of the full model's."),
    click.option("--score-samples", type=POSITIVE_INT, default=500, show_default=True,
                 help="Held-out images that score search candidates (the whole holdout scores the picks)."),
    click.option("--budget-margin", type=FiniteFloat(min=0.0, max=0.5, max_open=True), default=None,
                 help="Picks must cost at most (1 - margin) x a budget below the full model. Default: from the "
                      "latency table's error tail (p95 under-prediction of its validation sub-nets and probes), "
                      "else 0.02."),
    click.option("--holdout-fraction", type=FiniteFloat(min=0.0, max=1.0, min_open=True, max_open=True),
                 default=0.1, show_default=True, help="Share of the training data held out to score candidates."),
    click.option("--ranking", type=click.Choice(["noise", "l1"]), default="noise", show_default=True),
    click.option("--channel-groups", type=CHANNEL_GROUPS, default=8, show_default=True,
                 help="Channel groups per coupling group."),
    click.option("--group-size", type=CHANNEL_GROUPS, default=None, help="Absolute channel-group size (8, 16, 32) instead."),
    click.option("--min-groups", type=CHANNEL_GROUPS, default=1, show_default=True,
                 help="Floor of each group, in channel groups."),
    click.option("--threshold", default="drop:5", show_default=True,
                 help="Fine-tune below this holdout accuracy: '50%' absolute, 'drop:5' relative, or 'none'."),
    click.option("--pretrain-epochs", type=EPOCHS, default=5, show_default=True, help="Only when --weights is not given."),
    click.option("--rank-epochs", type=EPOCHS, default=1, show_default=True, help="Noise-ranking training epochs."),
    click.option("--train-epochs", type=EPOCHS, default=5, show_default=True,
                 help="Joint (sandwich) training epochs; autoslim's one-shot and final epochs together."),
    click.option("--finetune-batches", type=NONNEG_INT, default=50, show_default=True, help="Cap per fine-tuning."),
    click.option("--batches-per-epoch", type=POSITIVE_INT, default=None, help="Cap on batches per epoch (quick runs)."),
    click.option("--max-steps", type=NONNEG_INT, default=None, help="Stop the search after this many steps."),
    click.option("--lr", type=FiniteFloat(min=0.0, max=100.0, min_open=True), default=0.05, show_default=True),
    click.option("--batch-size", type=Int(min=1, max=65536), default=64, show_default=True),
    click.option("--seed", type=SEED, default=0, show_default=True),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True),
    click.option("--weights", default=None, type=click.Path(dir_okay=False), help="Trained full-model weights."),
    click.option("--out", default="runs/search", show_default=True, type=click.Path(file_okay=False)),
    click.option("--compare", multiple=True, type=click.Path(file_okay=False),
                 help="Other run directories to draw in the plot (repeatable)."),
    click.option("--resume", is_flag=True, help="Continue from the run directory's last checkpoint."),
    click.option("--overwrite", is_flag=True,
                 help="Start afresh in a run directory that holds an earlier run (its checkpoint is discarded)."),
    click.option("--option", "options", multiple=True, metavar="KEY=VALUE", callback=_parse_options,
                 help="An option of the method that has no flag of its own (repeatable; VALUE is JSON or text)."),
]


def _options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(OPTIONS):
        func = option(func)
    return func


@click.command()
@_options
def search(**kw: Any) -> None:
    """Search nested sub-nets for latency budgets, train them jointly, write subnets.json."""
    from .dist import init_from_env
    from .pipeline import run_search

    dist = init_from_env(kw["device"])
    config, cost, table_cost = build_config(kw, warn=dist.is_main)
    log = logging.getLogger("edgedyn.search")
    handler = logging.StreamHandler(sys.stderr) if dist.is_main else None
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.setLevel(logging.INFO)
        log.addHandler(handler)
    try:
        result = run_search(config, cost, select_cost=table_cost or cost)
    finally:
        if handler is not None:
            log.removeHandler(handler)
    if dist.is_main:
        unit = result.cost_unit
        click.echo(f"{'budget':>10} {'cost (' + unit + ')':>12} {'MMAC':>8} {'holdout':>8} {'test':>8}  widths")
        for s in result.subnets:
            click.echo(f"{s.budget.text:>10} {s.cost:12.4g} {s.macs / 1e6:8.2f} {100 * s.holdout_accuracy:7.2f}% "
                       f"{100 * s.test_accuracy:7.2f}%  {s.spec}")
        click.echo(f"wrote {config.out}/subnets.json, weights.pt, accuracy_latency.png")


def build_config(kw: dict[str, Any], warn: bool = True) -> tuple[Any, CostModel, CostModel | None]:
    """The command's options as a ``SearchConfig``, the steering cost model and the table's
    (None without ``--budget-table``)."""
    from ..cost import FlopsCost, LatencyCost
    from .config import SearchConfig

    kw = dict(kw)
    table_path, cost_name = kw.pop("table_path"), kw.pop("cost_name")
    if cost_name == "latency" and not table_path:
        raise EdgedynError("--cost latency needs --budget-table PATH (or use --cost flops)")
    measured, table_cost = None, None
    if table_path:
        from ..profile import LatencyTable

        table = LatencyTable.load(table_path)
        measured = bool(table.measured)
        if not measured and warn:
            click.echo(f"warning: {table_path} is NOT measured on hardware (an analytic estimate); "
                       "latencies are planning figures", err=True)
        table_cost = LatencyCost(table)
    cost: CostModel = table_cost if table_cost is not None and cost_name == "latency" else FlopsCost()
    compare = tuple(kw.pop("compare"))
    config = SearchConfig(**kw, table=table_path, table_measured=measured, compare=compare)
    return config, cost, table_cost
