"""Score latency tables against sub-nets timed elsewhere (e.g. a search benchmark's report).

Tables are judged on sub-nets they were not fitted to: the deployed sub-nets of a
``tools/bench_search.py`` report (``latency``: widths and median ms, one interleaved run)
or the rows of ``tools/check_table_bias.py``. Those runs happened at another time, and this
VM's speed drifts, so each table's predictions are first divided by one scale (the median
measured / predicted ratio); the error left is the table's own. Prints a table, writes JSON.

    python tools/table_vs_timings.py --tables OLD.json,profiles/cpu-resnet20.json \
        --timings results/bench_search_fmnist_r5.json,results/table_bias_resnet20.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _rows(path: Path) -> list[tuple[list[int], float]]:
    doc = json.loads(path.read_text())
    if "latency" in doc:  # a bench_search report
        return [(r["widths"], float(r["median"])) for r in doc["latency"]]
    return [(r["widths"], float(r["measured_ms"])) for r in doc["rows"]]  # check_table_bias


def score(table_path: str, timings: list[tuple[list[int], float]], model: str, input_size: int,
          group: int | None) -> dict:
    from scipy.stats import spearmanr

    from edgedyn.dynamic import DynamicNet, SubnetSpec
    from edgedyn.profile import LatencyTable

    table = LatencyTable.load(table_path)
    net = DynamicNet.from_name(model, input_size=input_size, num_classes=10)
    pred = np.array([table.predict(net, SubnetSpec.of(w)) for w, _ in timings])
    meas = np.array([m for _, m in timings])
    scale = float(np.median(meas / pred))
    err = meas / (scale * pred) - 1
    out = {"table": table_path, "n": len(timings), "drift_scale": round(scale, 4),
           "mape_pct": round(float(np.abs(err).mean() * 100), 2), "max_pct": round(float(np.abs(err).max() * 100), 1),
           "spearman": round(float(spearmanr(pred, meas).statistic), 4)}
    if group is not None:  # the mean error of sub-nets with this group at its value, and of the others
        g, v = group
        fam = np.array([w[g] == v for w, _ in timings])
        out[f"mean_err_group{g}={v}_pct"] = round(float(err[fam].mean() * 100), 1) if fam.any() else None
        out["mean_err_others_pct"] = round(float(err[~fam].mean() * 100), 1) if (~fam).any() else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", required=True, help="comma-separated table files")
    p.add_argument("--timings", required=True, help="comma-separated bench_search / table_bias JSON files")
    p.add_argument("--model", default="resnet20")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--group", default="4=16", help="GROUP=WIDTH: report this family's mean error apart")
    p.add_argument("--out", default=None, help="JSON to write")
    args = p.parse_args(argv)
    g, _, v = args.group.partition("=")
    group = (int(g), int(v)) if args.group else None
    results = []
    print(f"{'timings':<42}{'table':<40}{'n':>4}{'drift':>7}{'MAPE %':>8}{'max %':>7}{'rho':>8}{'family %':>9}"
          f"{'others %':>9}")
    for tpath in args.timings.split(","):
        rows = _rows(Path(tpath))
        for table in args.tables.split(","):
            r = {"timings": tpath, **score(table, rows, args.model, args.input_size, group)}
            results.append(r)
            fam = [v for k, v in r.items() if k.startswith("mean_err_group")]
            print(f"{tpath:<42}{table:<40}{r['n']:>4}{r['drift_scale']:>7.3f}{r['mape_pct']:>8.2f}{r['max_pct']:>7.1f}"
                  f"{r['spearman']:>8.4f}{(fam[0] if fam else float('nan')):>9}{r.get('mean_err_others_pct'):>9}")
    if args.out:
        from edgedyn.artifacts import atomic_write_json

        atomic_write_json(Path(args.out), {"schema": "edgedyn.table_vs_timings/1", "results": results})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
