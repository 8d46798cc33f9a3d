"""``edgedyn run``: a thin click command over :class:`~edgedyn.runtime.Selector` and
:func:`~edgedyn.runtime.serve.serve`.

Registered by ``edgedyn.cli`` (``cli.add_command(run)``); every expected failure is an
:class:`~edgedyn.errors.EdgedynError`, printed as one line. The ``--policy`` choices are the
policy registry's names (:data:`~edgedyn.runtime.policies.POLICIES`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..cli_types import NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, Ramp, Threads
from ..errors import EdgedynError
from .policies import POLICIES

if TYPE_CHECKING:
    from .serve import ServeReport


@click.command(name="run")
@click.option("--bundle", required=True, type=click.Path(), help="Bundle directory (edgedyn deploy --out).")
@click.option("--budget-ms", type=POSITIVE_FLOAT, default=None, help="Latency budget per request (ms, > 0).")
@click.option("--policy", type=click.Choice(list(POLICIES)), default="budget", show_default=True)
@click.option("--subnet", type=NONNEG_INT, default=None,
              help="Sub-net index for --policy fixed (default: most accurate).")
@click.option("--quantile", type=click.Choice(["p99", "p90", "median"]), default="p99", show_default=True,
              help="Which deploy-time latency a sub-net must fit the budget with (a budget is a deadline).")
@click.option("--requests", type=POSITIVE_INT, default=None, help="Serve this many requests (default 1000).")
@click.option("--duration", type=POSITIVE_FLOAT, default=None, help="Or serve for this many seconds (> 0).")
@click.option("--input", "input_path", default=None, type=click.Path(),
              help="Request inputs: a folder of images or a .npy (default: random tensors).")
@click.option("--schedule", default=None, type=click.Path(dir_okay=False),
              help="JSON list of [request_index (or t_seconds with --duration), budget_ms].")
@click.option("--ramp", type=Ramp(), default=None, help="Budget ramp A:B ms over the run, e.g. 2:0.3 (both > 0).")
@click.option("--threads", type=Threads(), default=None,
              help="Override the bundle's CPU thread count (1 to the CPUs available).")
@click.option("--allow-other-device", is_flag=True, help="Load a bundle deployed on another device (testing only).")
@click.option("--verify-key", default=None, type=click.Path(dir_okay=False),
              help="Key file (deploy --sign): refuse a bundle that is unsigned or not signed with this key.")
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False),
              help="Also write the report as JSON (never over a bundle's files or another kind of artifact).")
def run(bundle, budget_ms, policy, subnet, quantile, requests, duration, input_path, schedule, ramp, threads,
        allow_other_device, verify_key, json_out) -> None:
    """Serve requests from a bundle under a latency budget and report sub-net use and misses.

    Ctrl-C or SIGTERM ends the run early: the report of what was served is printed (and
    written with --json, marked "partial": true), then the exit status is 130 (Ctrl-C) or
    143 (SIGTERM).
    """
    from . import serve
    from .selector import Selector

    if requests is not None and duration is not None:
        raise EdgedynError("give --requests or --duration, not both")
    if requests is None and duration is None:
        requests = 1000
    budget = serve.make_budget(budget_ms, schedule, ramp, requests, duration)  # checks every number first
    if json_out:  # checked before serving: a report that cannot be written would be lost
        _check_json_out(Path(json_out))
    with Selector.load(bundle, policy, budget_ms=budget_ms, subnet=subnet, threads=threads,
                       allow_other_device=allow_other_device, quantile=quantile,
                       verify_key=Path(verify_key) if verify_key else None) as selector:
        inputs = serve.load_inputs(input_path, selector.manifest.input_shape, dtype=selector.input_dtype)
        watcher = _follow_state(selector)
        selector.warmup()
        length = f"{requests} requests" if requests is not None else f"{duration:g} s"
        click.echo(f"serving {bundle} for {length}; Ctrl-C or SIGTERM stops it with a partial report", err=True)
        try:
            report = serve.serve(selector, inputs, requests=requests, duration_s=duration, budget=budget,
                                 report_interrupt=True)
        finally:
            if watcher is not None:
                watcher.stop()
        _emit(report, json_out)  # before the runners are released: an interrupt there loses nothing
    if report.interrupted is not None:  # Ctrl-C or SIGTERM: the group exits 130 or 143
        raise report.interrupted


def _follow_state(selector: Any) -> Any:
    """Serve by the latencies of the machine state this machine is in now (a bundle whose table
    held several states); on a Jetson, keep following it (the power mode may change while
    serving). Returns the watcher to stop, or None."""
    from .states import machine_state_reader

    states = (selector.manifest.states or {}).get("by_id", {})
    if not states:
        return None
    reader = machine_state_reader(selector.manifest)
    if selector.manifest.device.get("kind") == "jetson":
        return selector.watch_state(reader)
    selector.set_state(reader())
    return None


def _emit(report: ServeReport, json_out: str | None) -> None:
    """Print the report and write it to ``json_out``, checked again just before writing."""
    from ..artifacts import atomic_write_json

    click.echo(report.format())
    if not json_out:
        return
    _check_json_out(Path(json_out))
    try:
        atomic_write_json(Path(json_out), report.to_dict())
    except OSError as err:
        raise EdgedynError(f"{json_out}: cannot write the report ({err.strerror or err}) (--json)") from None
    click.echo(f"wrote {json_out}{' (partial)' if report.partial else ''}")


def _old_report(path: Path) -> bool:
    """Whether ``path`` is a run report written before reports had a schema (it may be replaced)."""
    import json

    try:
        if not path.is_file() or path.stat().st_size > (16 << 20) or (path.parent / "manifest.json").exists():
            return False
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and "schema" not in obj and {"policy", "requests", "subnets"} <= obj.keys()


def _check_json_out(path: Path) -> None:
    """One line, before any serving, for a --json path that cannot be written, or that holds
    something else than a run report (a bundle's manifest, a latency table, ...)."""
    import os

    from ..artifacts import refuse_foreign
    from .serve import REPORT_SCHEMA

    if path.is_dir():
        raise EdgedynError(f"{path}: is a folder; --json must name a file")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise EdgedynError(f"{path}: {parent} is a file, not a folder; choose another --json")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgedynError(f"{path}: {parent} is not writable; choose another --json")
    if not _old_report(path):
        refuse_foreign(path, REPORT_SCHEMA, hint="; choose another --json")


__all__ = ["run"]
