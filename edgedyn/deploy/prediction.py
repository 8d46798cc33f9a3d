"""Predicted latencies for a bundle: from a latency table made for it, else the search's own costs.

A table predicts a bundle only if it was profiled with the same backend, precision, CPU
threads and device fingerprint (a warning says why not, and nothing is predicted). Without
any table, an fp32 bundle takes the search's latency costs (from the run's table) as its
prediction. The table also fixes the bundle's serving threads (:func:`serving_threads`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .source import RunInfo, RunSubnet

if TYPE_CHECKING:
    from ..blocks.layout import Layout

log = logging.getLogger("edgedyn.deploy")


def load_table(run: RunInfo, table: Any) -> tuple[Any, Any]:
    """The latency table given (``table``), else the run's if its file is there; or Nones."""
    table_path = table if table is not None else (run.table if run.table and Path(run.table).is_file() else None)
    if table_path is None:
        return None, None
    from ..profile.table import LatencyTable

    return LatencyTable.load(table_path), table_path


def serving_threads(lat_table: Any, table_path: Any, backend: str, threads: int | None) -> int | None:
    """CPU threads the bundle serves with (ONNX Runtime): asked for, else those the table
    was profiled with (chosen for this model on this CPU, whatever its precision), else all cores."""
    if backend != "onnxruntime":
        return threads
    if threads is not None:
        return threads
    have = lat_table.threads if lat_table is not None else None  # its machine state's (edgedyn recheck)
    if have is not None and lat_table.backend.get("name") == backend:
        log.info("%s: serving with the table's %s CPU threads", table_path, have)
        return int(have)
    from ..backends.onnxruntime import default_threads

    return default_threads()


def predicts(lat_table: Any, table_path: Any, backend: str, precision: str, threads: int | None) -> bool:
    """Whether the table's latencies hold for this bundle (a warning says why not)."""
    if lat_table.precision != precision or lat_table.backend.get("name") != backend:
        log.warning("%s: a %s %s table does not predict %s %s; no predicted latencies", table_path,
                    lat_table.backend.get("name"), lat_table.precision, backend, precision)
        return False
    if threads is not None and lat_table.states and lat_table.threads != threads:
        lat_table.select_state(threads=threads)  # a state re-checked (or profiled) at that thread count
    if threads is not None and lat_table.threads not in (None, threads):
        log.warning("%s: the table was profiled with %s CPU threads, this bundle serves with %s; "
                    "no predicted latencies (move it: edgedyn recheck --table %s --threads %s --out NEW.json)",
                    table_path, lat_table.threads, threads, table_path, threads)
        return False
    return True


class Prediction:
    """Where a bundle's predicted latencies come from, and the CPU threads it serves with."""

    def __init__(self, run: RunInfo, table: Any, backend: str, precision: str, threads: int | None) -> None:
        self.run, self.precision = run, precision
        self.table, self.path = load_table(run, table)  # a bad table fails before anything is written
        # without any table, the search's own latency costs (from the run's table) are the prediction
        self.search_cost = self.table is None
        self.threads = serving_threads(self.table, self.path, backend, threads)
        if self.table is not None and not predicts(self.table, self.path, backend, precision, self.threads):
            self.table = self.path = None

    def on_device(self, fingerprint: str, layout: Layout | None = None) -> None:
        """Drop a table profiled on another device (with a warning): another fingerprint, or
        another activation ``layout`` than the backend runs here (e.g. ONNX Runtime's NCHWc
        block, 16 with AVX-512 and 8 with AVX2, on CPUs that share a name)."""
        if self.table is not None and self.table.device.get("fingerprint") != fingerprint:
            log.warning("%s: field 'device.fingerprint' is %r, this device is %r; no predicted latencies", self.path,
                        self.table.device.get("fingerprint"), fingerprint)
            self.table = self.path = None
        if self.table is not None and layout is not None and self.table.layout != layout:
            log.warning("%s: field 'layout' is %r, the backend runs %r on this device (a table from another CPU); "
                        "no predicted latencies (profile this one: edgedyn profile)", self.path,
                        self.table.layout.tag, layout.tag)
            self.table = self.path = None

    def predicted_ms(self, sub: RunSubnet, spec: Any) -> float | None:
        """The predicted latency of ``spec`` (serving search pick ``sub``), or None."""
        if self.table is not None:
            return float(self.table.predict(self.run.net, spec))
        if self.search_cost and self.run.cost_unit == "ms" and sub.cost is not None and self.precision == "fp32":
            return float(sub.cost)  # the search's own latency cost (an fp32 table)
        return None
