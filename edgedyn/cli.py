"""The ``edgedyn`` command line: thin click commands over the Python API.

Every expected failure is an :class:`~edgedyn.errors.EdgedynError`; the group turns it
into one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from . import __version__
from .cli_types import CHANNEL_GROUPS, EPOCHS, INPUT_SIZE, MODEL_HELP, NONNEG_INT, NUM_CLASSES, POSITIVE_INT, Int, Threads
from .errors import EdgedynError, Terminated

EXIT_ERROR, EXIT_SIGINT, EXIT_SIGTERM = 2, 130, 143


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgedynError as err:
            _fail(str(err))
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated) under main()
            terminated = isinstance(err, Terminated)
            click.echo("terminated" if terminated else "interrupted", err=True)
            sys.exit(EXIT_SIGTERM if terminated else EXIT_SIGINT)
        except OSError as err:
            if err.errno == errno.EPIPE:  # click's own rule: a closed pipe on stdout ends quietly
                raise
            _fail(f"{user_file(err)}: {err.strerror or _first_line(err)}")
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            _fail(f"{user_file(err)}: cannot decode it ({_first_line(err)})")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedyn")
def cli() -> None:
    """edgedyn: one CNN at many speeds, chosen by latency measured on your device."""


def _parse_spec(text: str):
    """A spec given inline as JSON (``[8,16,...]`` / ``{"widths": [...]}``) or as a JSON file."""
    from .dynamic import SubnetSpec

    path = Path(text)
    if not text.lstrip().startswith(("[", "{")) and path.suffix == ".json":
        if not path.is_file():
            raise EdgedynError(f"{path}: spec file not found")
        return SubnetSpec.from_json(path.read_text(), where=str(path))
    return SubnetSpec.from_json(text, where="--spec")


@cli.command()
@click.option("--model", "model_name", required=True,
              help=MODEL_HELP)
@click.option("--input-size", type=INPUT_SIZE, default=None, help="Input height = width (model default if omitted).")
@click.option("--num-classes", type=NUM_CLASSES, default=None, help="Classifier outputs (model default if omitted).")
@click.option("--channel-groups", type=CHANNEL_GROUPS, default=8, show_default=True,
              help="Equal channel groups per coupling group.")
@click.option("--group-size", type=CHANNEL_GROUPS, default=None,
              help="Absolute channel-group size (e.g. 8, 16, 32) instead.")
@click.option("--min-groups", type=CHANNEL_GROUPS, default=1, show_default=True,
              help="Floor of each group, in channel groups.")
@click.option("--spec", "spec_text", default=None, help="Also report this sub-net (inline JSON or a .json file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect(model_name, input_size, num_classes, channel_groups, group_size, min_groups, spec_text, as_json) -> None:
    """List a model's coupling groups, channel grids and floors, which layers edgedyn slices and which it
    holds at full width (frozen) and why, with MACs and params."""
    from .inspect import describe, format_description

    spec = _parse_spec(spec_text) if spec_text else None
    desc = describe(model_name, input_size=input_size, num_classes=num_classes, channel_groups=channel_groups,
                    group_size=group_size, min_groups=min_groups, spec=spec)
    click.echo(json.dumps(desc, indent=1) if as_json else format_description(desc))


def _model_options(f):
    """Options that fix the dynamic network (shared by profile, search, deploy)."""
    for opt in reversed([
        click.option("--model", "model_name", required=True, help=MODEL_HELP),
        click.option("--input-size", type=INPUT_SIZE, default=None, help="Input height = width (model default if omitted)."),
        click.option("--num-classes", type=NUM_CLASSES, default=None, help="Classifier outputs (model default if omitted)."),
        click.option("--channel-groups", type=CHANNEL_GROUPS, default=8, show_default=True,
                     help="Equal channel groups per coupling group."),
        click.option("--group-size", type=CHANNEL_GROUPS, default=None,
                     help="Absolute channel-group size (8, 16, 32) instead."),
        click.option("--min-groups", type=CHANNEL_GROUPS, default=1, show_default=True,
                     help="Floor of each group, in channel groups."),
    ]):
        f = opt(f)
    return f


@cli.command()
@_model_options
@click.option("--device", type=click.Choice(["cpu", "cuda", "jetson"]), default="cpu", show_default=True)
@click.option("--backend", type=click.Choice(["onnxruntime", "torch", "tensorrt", "roofline"]), default=None,
              help="Default follows the device: cpu -> onnxruntime, cuda/jetson -> tensorrt.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Default follows the device: cpu -> fp32, cuda/jetson -> fp16.")
@click.option("--batch", type=Int(min=1, max=4096), default=1, show_default=True)
@click.option("--threads", type=Threads(), default=None,
              help="CPU intra-op threads (ONNX Runtime). Default: the fewest of 1, 2, 4, ... "
              "cores that run the smallest, half and full sub-nets within 5% of the fastest count.")
@click.option("--subsample", type=Int(min=1, max=1024), default=None,
              help="Measure every N-th width per axis and interpolate the rest (default 1; tensorrt 2).")
@click.option("--passes", type=Int(min=1, max=1000), default=3, show_default=True,
              help="Time every block in this many differently shuffled pools (median).")
@click.option("--thorough", is_flag=True,
              help="About twice the calls per block and per whole sub-net, twice the time: validation "
                   "error about half the default's (docs/machine-states.md).")
@click.option("--calibrate", type=Int(min=0, max=100_000), default=144, show_default=True,
              help="Whole sub-nets measured end to end for the calibration fit (per-block corrections need >= 16).")
@click.option("--validate", type=Int(min=0, max=100_000), default=0, show_default=True,
              help="Measure K other random sub-nets end to end and report the table's accuracy.")
@click.option("--probes", type=Int(min=0, max=64), default=12, show_default=True,
              help="Reference sub-nets timed with the calibration and stored for edgedyn recheck (0: none).")
@click.option("--roofline-device", type=click.Path(path_type=Path), default=None,
              help="Device spec JSON for --backend roofline (default: the shipped Jetson AGX Orin 64GB).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Table to write (JSON).")
@click.option("--resume", is_flag=True, help="Continue an interrupted profile from <out>.partial.json.")
@click.option("--merge", is_flag=True, help="Add this model's blocks to an existing table at --out.")
@click.option("--overwrite", is_flag=True, help="Start afresh, discarding an interrupted profile's <out>.partial.json, "
              "or replace a file at --out that is not a latency table.")
@click.option("--refit", is_flag=True,
              help="Measure nothing: re-derive the table at --out from the timings it holds (pooled blocks, "
                   "calibration, validation), e.g. after an edgedyn upgrade; same model options as its profile.")
@click.option("--quiet", is_flag=True, help="No progress bars or progress lines.")
def profile(model_name, input_size, num_classes, channel_groups, group_size, min_groups, device, backend, precision,
            batch, threads, subsample, passes, thorough, calibrate, validate, probes, roofline_device, out, resume, merge,
            overwrite, refit, quiet) -> None:
    """Measure per-block latency on this device and write a latency lookup table."""
    from .profile.profiler import ProfileConfig, ProfileInterrupted
    from .profile.profiler import profile as run_profile

    cfg = ProfileConfig(model=model_name, input_size=input_size, num_classes=num_classes, device=device,
                        backend=backend, precision=precision, batch=batch, threads=threads,
                        channel_groups=channel_groups, group_size=group_size, min_groups=min_groups,
                        subsample=subsample, passes=passes, thorough=thorough, calibrate=calibrate,
                        validate=validate, probes=probes,
                        roofline_device=roofline_device, resume=resume, merge=merge, overwrite=overwrite,
                        out=out or Path("profiles") / f"{device}-{model_name}.json").resolved()
    if refit:
        from .profile.profiler import Profiler

        if resume or merge or overwrite:
            raise click.UsageError("--refit re-derives an existing table: give it without --resume, --merge "
                                   "or --overwrite")
        if not cfg.out.is_file():
            raise click.UsageError(f"--refit: no table at {cfg.out} (give --out)")
        Profiler(cfg, log=lambda m: click.echo(m, err=True), progress=False).refit()
        click.echo(f"wrote {cfg.out}: refitted from the timings it holds")
        return
    cfg.check_paths()  # before anything is measured or written
    if cfg.device == "jetson" and cfg.backend != "roofline":
        from .device import device_info

        for w in device_info("jetson").get("warnings", []):
            click.echo(f"warning: {w}", err=True)
    try:
        table = run_profile(cfg, log=lambda m: click.echo(m, err=True), progress=not quiet)
    except ProfileInterrupted as err:  # Ctrl-C: one line, the conventional status of SIGINT
        click.echo(str(err), err=True)
        sys.exit(130)
    if not table.measured:
        click.echo(f"warning: {table.warn_if_unmeasured()}", err=True)
    counts = {s: sum(1 for e in table.entries.values() if e.source == s) for s in ("measured", "interpolated",
                                                                                   "roofline")}
    click.echo(f"wrote {cfg.out}: {len(table.entries)} blocks {counts}, "
               f"{table.backend.get('profile_seconds', '?')} s")


@cli.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--data", default="synthetic", show_default=True, help="Dataset spec (digits, synthetic, ...).")
@click.option("--epochs", type=EPOCHS, default=5, show_default=True, help="Pre-training and joint-training epochs.")
@click.option("--validate", type=NONNEG_INT, default=10, show_default=True, help="Table validation sub-nets.")
@click.option("--requests", type=POSITIVE_INT, default=10000, show_default=True,
              help="Requests served under the budget ramp (half down, half up).")
def demo(out, data, epochs, validate, requests) -> None:
    """The whole pipeline on the embedded defaults: profile -> search -> deploy -> run."""
    from .demo import run_demo

    run_demo(out, data=data, epochs=epochs, validate=validate, requests=requests, log=click.echo)


def _register() -> None:
    """Commands that live beside their packages (their heavy imports stay inside the commands)."""
    from .deploy.cli_cmd import deploy
    from .profile.cli_cmd import recheck
    from .runtime.cli_cmd import run
    from .search.cli_cmd import search

    for command in (search, deploy, run, recheck):
        cli.add_command(command)


_register()


# -- one rule for every command: errors, Ctrl-C and SIGTERM ----------------------------------
_PATH_NAMES = ("path", "file", "filename", "fh", "fp", "src", "dst", "out", "target")


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _fail(message: str) -> None:
    lines = message.strip().splitlines()
    click.echo(f"error: {lines[0] if lines else 'failed'}", err=True)
    sys.exit(EXIT_ERROR)


def user_file(err: BaseException) -> str:
    """The file an OSError or a decode error concerns: its ``filename``, else the innermost
    frame of its traceback with a path-like local (``path``, ``fh``, ...); ``"a file"`` if none."""
    for name in (getattr(err, "filename", None), getattr(err, "filename2", None)):
        if isinstance(name, (str, bytes, os.PathLike)):
            return os.fsdecode(name)
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for name in _PATH_NAMES:
            value = frame.f_locals.get(name)
            if isinstance(value, os.PathLike) or isinstance(value, str) and value and "\n" not in value:
                return os.fspath(value)
            if isinstance(getattr(value, "name", None), str):  # an open file
                return value.name  # type: ignore[union-attr]
    return "a file"


_sigterm_seen = False


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds the main thread as Ctrl-C does; a second one lets that cleanup finish."""
    global _sigterm_seen
    if _sigterm_seen:
        return
    _sigterm_seen = True
    raise Terminated()


def main() -> None:
    """The ``edgedyn`` entry point: SIGTERM behaves as Ctrl-C (state saved, temporary files
    removed) and ends with status 143; Ctrl-C ends with 130; expected failures with 2."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        cli(prog_name="edgedyn")
    except SystemExit as done:  # a command that handled the interrupt itself (profile exits 130)
        if _sigterm_seen and done.code != EXIT_ERROR:
            sys.exit(EXIT_SIGTERM)
        raise
    except KeyboardInterrupt:  # outside the commands (while parsing options): click's Abort did not see it
        sys.exit(EXIT_SIGTERM if _sigterm_seen else EXIT_SIGINT)


if __name__ == "__main__":
    main()
