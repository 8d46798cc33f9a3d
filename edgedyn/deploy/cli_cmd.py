"""``edgedyn deploy`` and ``edgedyn run``: thin click commands over :func:`edgedyn.deploy.deploy`
and :mod:`edgedyn.runtime`.

Registered by ``edgedyn.cli`` (``cli.add_command(deploy)``, ``cli.add_command(run)``); every
expected failure is an :class:`~edgedyn.errors.EdgedynError`, printed as one line.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_types import NONNEG_INT, POSITIVE_FLOAT, POSITIVE_INT, Int, Ramp, Threads
from ..errors import EdgedynError


@click.command(name="deploy")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="Search run directory (subnets.json + weights.pt).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--calib", default=None, type=click.Path(),
              help="INT8 calibration data: a folder of images or a .npy (default: the run's training data).")
@click.option("--out", default="bundle", show_default=True, type=click.Path(), help="Bundle directory to write.")
@click.option("--table", default=None, type=click.Path(dir_okay=False), help="Latency table for predicted latencies.")
@click.option("--threads", type=Threads(), default=None,
              help="CPU intra-op threads, 1 to the CPUs available (default: the latency table's, else the CPUs available).")
@click.option("--measure-iters", type=Int(min=1, max=10_000_000), default=2000, show_default=True,
              help="Timed calls per sub-net at most (each is timed for about 2 s, at least 200 calls).")
@click.option("--keep-dominated", is_flag=True,
              help="Deploy every search pick, also one no more accurate (fp32, test split) than a cheaper pick.")
def deploy(run_dir, backend, precision, calib, out, table, threads, measure_iters, keep_dominated) -> None:
    """Build a bundle: one compiled, checked, re-measured artifact per chosen sub-net."""
    from .build import deploy as build_bundle

    m = build_bundle(run_dir, backend=backend, precision=precision, calib=calib, out=out, table=table,
                     threads=threads, measure_iters=measure_iters, keep_dominated=keep_dominated)
    click.echo(f"bundle {m.root} ({m.backend['name']} {m.backend['version']}, {m.precision}, "
               f"threads {m.threads}) for {m.fingerprint}")
    click.echo(f"{'sub-net':>7} {'MMAC':>8} {'pred ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
               f"{'acc':>6} {'d acc':>6} {'agree':>6}")
    for s in m.subnets:
        meas = s.measured or {}
        acc = s.accuracy

        def f(v, spec=".3f"):
            return format(v, spec) if isinstance(v, (int, float)) else "-"

        click.echo(f"{s.index:>7} {s.macs / 1e6:>8.2f} {f(s.predicted_ms):>8} {f(meas.get('median')):>8} "
                   f"{f(meas.get('p90')):>8} {f(meas.get('p99')):>8} {f(acc.get('test')):>6} "
                   f"{f(acc.get('delta'), '+.3f'):>6} {f(acc.get('agreement')):>6}")
    checks = m.checks
    if "prediction_within_10pct" in checks:
        errs = ", ".join(f"{100 * e:+.1f}%" for e in checks["prediction_error"].values())
        click.echo(f"measured vs predicted: {errs} (all within 10%: {'yes' if checks['prediction_within_10pct'] else 'no'})")
    if "latency_rising" in checks:
        click.echo(f"latency rises with size: {'yes' if checks['latency_rising'] else 'no'}; accuracy rises: "
                   f"{'yes' if checks.get('accuracy_rising') else 'no' if 'accuracy_rising' in checks else '-'}")
    for problem in checks.get("problems", []):
        click.echo(f"warning: {problem}", err=True)
    for note in m.notes:
        click.echo(f"note: {note}")


@click.command(name="run")
@click.option("--bundle", required=True, type=click.Path(), help="Bundle directory (edgedyn deploy --out).")
@click.option("--budget-ms", type=POSITIVE_FLOAT, default=None, help="Latency budget per request (ms, > 0).")
@click.option("--policy", type=click.Choice(["budget", "fixed", "adaptive"]), default="budget", show_default=True)
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
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the report as JSON.")
def run(bundle, budget_ms, policy, subnet, quantile, requests, duration, input_path, schedule, ramp, threads,
        allow_other_device, json_out) -> None:
    """Serve requests from a bundle under a latency budget and report sub-net use and misses."""
    from ..artifacts import atomic_write_json
    from ..runtime import Selector
    from ..runtime.serve import load_inputs, make_budget, serve

    if requests is not None and duration is not None:
        raise EdgedynError("give --requests or --duration, not both")
    if requests is None and duration is None:
        requests = 1000
    budget = make_budget(budget_ms, schedule, ramp, requests, duration)  # checks every number first
    if json_out:  # checked before serving: a report that cannot be written would be lost
        _check_json_out(Path(json_out))
    with Selector.load(bundle, policy, budget_ms=budget_ms, subnet=subnet, threads=threads,
                       allow_other_device=allow_other_device, quantile=quantile) as selector:
        inputs = load_inputs(input_path, selector.manifest.input_shape)
        selector.warmup()
        report = serve(selector, inputs, requests=requests, duration_s=duration, budget=budget)
    click.echo(report.format())
    if json_out:
        try:
            atomic_write_json(Path(json_out), report.to_dict())
        except OSError as err:
            raise EdgedynError(f"{json_out}: cannot write the report ({err.strerror or err}) (--json)") from None
        click.echo(f"wrote {json_out}")


def _check_json_out(path: Path) -> None:
    """One line, before any serving, for a --json path that cannot be written."""
    import os

    if path.is_dir():
        raise EdgedynError(f"{path}: is a folder; --json must name a file")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise EdgedynError(f"{path}: {parent} is a file, not a folder; choose another --json")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgedynError(f"{path}: {parent} is not writable; choose another --json")


__all__ = ["deploy", "run"]
