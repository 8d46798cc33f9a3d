"""Phase 1 of a profile on a measuring backend: time the block grid, fill in the rest.

Every block is timed in ``passes`` differently shuffled pools of ``chunk`` blocks
(:data:`~edgedyn.profile.measure.BLOCKS` with :func:`~edgedyn.profile.measure.measure_interleaved`),
each in the layout the backend runs it in inside a network, alongside the fixed cost of one
backend call (:meth:`~edgedyn.backends.base.Backend.overhead_runner`). The entry is the median
over passes; keys that run the same computation are pooled and the keys left out by
``subsample`` are interpolated (:mod:`~edgedyn.profile.grid`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..progress import Progress
from .grid import interpolate, share_as_run, subsample_keys
from .measure import BLOCKS, BLOCKS_THOROUGH, measure_interleaved
from .table import Entry, LatencyTable
from .tempdirs import owned_tempdir

if TYPE_CHECKING:
    from ..backends import Backend
    from ..blocks import BlockKey
    from .config import ProfileConfig

CHECKPOINT_EVERY_S = 10.0


@dataclasses.dataclass
class BlockTiming:
    """Times ``keys`` on ``backend`` into ``table``. ``done`` holds each key's median per pass
    so far (``key.to_str()`` -> ms; resumed from a checkpoint, emptied as entries are written);
    ``checkpoint`` saves the progress."""

    backend: Backend
    cfg: ProfileConfig
    done: dict[str, list[float]]
    checkpoint: Callable[[], None]
    log: Callable[[str], None]
    progress: bool = True

    def run(self, table: LatencyTable, keys: list[BlockKey], model: str) -> None:
        c = self.cfg
        measure, interp = subsample_keys(keys, c.subsample or 1)
        todo = [k for k in measure if table.entries.get(k, Entry(0, "interpolated")).source != "measured"]
        self.log(f"{model}: {len(keys)} distinct blocks; measuring {len(todo)} in {c.passes} passes "
                 f"({len(measure) - len(todo)} already in the table), interpolating {len(interp)}")
        overheads = self._time(todo)
        for k in todo:
            per_pass = np.array(self.done.pop(k.to_str()))
            # the median over passes; p10 / p90 hold the lowest and highest pass (spread across pools)
            table.entries[k] = Entry(float(np.median(per_pass)), "measured", float(per_pass.min()),
                                     float(per_pass.max()), None, len(per_pass))
        pooled = share_as_run(table.entries)
        if pooled:
            self.log(f"{pooled} blocks share their timing with blocks run on the same padded shapes "
                     f"(layout {table.layout.tag})")
        if overheads:  # measured alongside every chunk; a resumed or merged run keeps the old one
            table.call_overhead_ms = float(np.median(overheads))
            self.log(f"fixed cost of one {c.backend} call: {table.call_overhead_ms * 1e3:.1f} us "
                     "(in every block entry; paid once per sub-net)")
        if interp:
            table.entries.update(interpolate(table.entries, [k for k in interp
                                                             if table.entries.get(k) is None
                                                             or table.entries[k].source != "measured"]))
        self.checkpoint()

    def _time(self, todo: list[BlockKey]) -> list[float]:
        """Time ``todo`` in every pass not yet done; returns the call overhead of each chunk."""
        c, done = self.cfg, self.done
        bar = Progress(total=len(todo) * c.passes,
                       initial=sum(min(len(done.get(k.to_str(), [])), c.passes) for k in todo),
                       desc="blocks", unit="blk", disable=not self.progress, log=self.log)
        base = BLOCKS_THOROUGH if c.thorough else BLOCKS
        protocol = dataclasses.replace(base, min_reps=-(-base.min_reps // c.passes),
                                       max_reps=-(-base.max_reps // c.passes), target_ms=base.target_ms / c.passes)
        last_ckpt = time.monotonic()
        overheads = []
        # a build directory for backends that compile blocks to files (TensorRT); removed after
        with owned_tempdir("blocks") as tmp, bar:
            empty = self.backend.overhead_runner()
            for p in range(c.passes):
                # every pass mixes all kinds of blocks in new pools: each block is timed among
                # several different cache neighbours, and at several moments (drift)
                left = [k for k in todo if len(done.get(k.to_str(), [])) <= p]
                left = [left[i] for i in np.random.default_rng(p).permutation(len(left))]
                for i in range(0, len(left), c.chunk):
                    chunk = left[i:i + c.chunk]
                    runners = [self.backend.block_runner(k, Path(tmp)) for k in chunk] + (
                        [empty] if empty is not None else [])
                    stats = measure_interleaved(runners, protocol, seed=p * 100_003 + i)
                    for k, st in zip(chunk, stats):
                        done.setdefault(k.to_str(), []).append(st.median)
                    if empty is not None:
                        overheads.append(stats[-1].median)
                    del runners
                    bar.update(len(chunk))
                    if time.monotonic() - last_ckpt > CHECKPOINT_EVERY_S:
                        self.checkpoint()
                        last_ckpt = time.monotonic()
        return overheads
