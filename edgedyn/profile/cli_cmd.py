"""``edgedyn recheck``: a thin click command over :func:`edgedyn.profile.recheck.recheck`.

Registered by ``edgedyn.cli``; every expected failure is one line and exit status 2.
"""

from __future__ import annotations

from pathlib import Path

import click

from ..cli_types import Int, Threads


@click.command(name="recheck")
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Latency table to re-check against this machine now.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Table to write: the source's contents plus this machine state.")
@click.option("--threads", type=Threads(), default=None,
              help="CPU threads of the state to re-check for (default: the table's); another count moves the "
                   "table to it.")
@click.option("--probes", type=Int(min=0, max=64), default=None,
              help="Re-time this many of each model's stored probes, spread smallest to full (default: all).")
@click.option("--model", "model_name", default=None,
              help="A table written before probes existed: the model to re-check it on (probes chosen now).")
@click.option("--input-size", type=Int(min=1, max=100_000), default=None,
              help="With --model: its input size (default: the model's).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists (also the input table itself).")
def recheck(table_path: Path, out: Path, threads: int | None, probes: int | None, model_name: str | None,
            input_size: int | None, overwrite: bool) -> None:
    """Re-time a table's probes now and write it for this machine state (seconds, not a profile)."""
    from .recheck import recheck as run_recheck

    run_recheck(table_path, out, threads=threads, probes=probes, model=model_name, input_size=input_size,
                overwrite=overwrite,
                log=click.echo)


__all__ = ["recheck"]
