"""``edgedyn deploy``: a thin click command over :func:`edgedyn.deploy.deploy`.

Registered by ``edgedyn.cli`` (``cli.add_command(deploy)``); every expected failure is an
:class:`~edgedyn.errors.EdgedynError`, printed as one line. (``edgedyn run`` lives in
:mod:`edgedyn.runtime.cli_cmd`.)
"""

from __future__ import annotations

import click

from ..cli_types import Int, Threads


@click.command(name="deploy")
@click.option("--run", "run_dir", required=True, type=click.Path(), help="Search run directory (subnets.json + weights.pt).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--calib", default=None, type=click.Path(),
              help="INT8 calibration data: a folder of images or a .npy (default: the run's training data).")
@click.option("--out", default="bundle", show_default=True, type=click.Path(),
              help="Bundle to write: a link to OUT.d/v-<time>, swapped atomically; a second deploy to it is refused "
                   "while this one runs.")
@click.option("--table", default=None, type=click.Path(dir_okay=False), help="Latency table for predicted latencies.")
@click.option("--threads", type=Threads(), default=None,
              help="CPU intra-op threads, 1 to the CPUs available (default: the latency table's, else the CPUs available).")
@click.option("--measure-iters", type=Int(min=1, max=10_000_000), default=2000, show_default=True,
              help="Timed calls per sub-net at most (each is timed for about 2 s, at least 200 calls).")
@click.option("--keep-dominated", is_flag=True,
              help="Deploy every search pick, also one no more accurate (fp32, test split) than a cheaper pick.")
@click.option("--sign", default=None, type=click.Path(dir_okay=False),
              help="Key file (at least 16 bytes, e.g. head -c 32 /dev/urandom > KEY): write manifest.sig, an "
                   "HMAC-SHA256 over the manifest, for edgedyn run --verify-key.")
def deploy(run_dir, backend, precision, calib, out, table, threads, measure_iters, keep_dominated, sign) -> None:
    """Build a bundle: one compiled, checked, re-measured artifact per chosen sub-net."""
    from . import build

    m = build.deploy(run_dir, backend=backend, precision=precision, calib=calib, out=out, table=table,
                     threads=threads, measure_iters=measure_iters, keep_dominated=keep_dominated, sign=sign)
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
        def errs(key: str) -> str:
            return ", ".join(f"{100 * e:+.1f}%" for e in checks[key].values())

        rc = checks.get("recheck")
        if rc is not None and rc.get("trusted"):
            click.echo(f"re-check: {rc['probes']} probes timed beside the sub-nets, {rc['correction']['form']} "
                       f"correction; probe MAPE {rc['probe_mape_before']:.1f}% -> {rc['probe_mape_after_loo']:.1f}% "
                       "(leave-one-out)")
            click.echo(f"measured vs table as profiled: {errs('prediction_error_raw')} (all within 10%: "
                       f"{'yes' if checks['prediction_raw_within_10pct'] else 'no'})")
            click.echo(f"measured vs re-checked table: {errs('prediction_error')} (all within 10%: "
                       f"{'yes' if checks['prediction_within_10pct'] else 'no'})")
        else:
            click.echo(f"measured vs predicted: {errs('prediction_error')} (all within 10%: "
                       f"{'yes' if checks['prediction_within_10pct'] else 'no'})")
    if "latency_rising" in checks:
        click.echo(f"latency rises with size: {'yes' if checks['latency_rising'] else 'no'}; accuracy rises: "
                   f"{'yes' if checks.get('accuracy_rising') else 'no' if 'accuracy_rising' in checks else '-'}")
    for problem in checks.get("problems", []):
        click.echo(f"warning: {problem}", err=True)
    for note in m.notes:
        click.echo(f"note: {note}")
    if sign:
        click.echo(f"signed: {m.root / 'manifest.sig'} (HMAC-SHA256 over the manifest; run --verify-key {sign})")


__all__ = ["deploy"]
