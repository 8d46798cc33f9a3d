"""Time a few sub-nets with deploy's protocol and compare them with the latency table.

Round 5 of the search benchmark found one family of search picks (a width-8 stem / first
stage with 16-channel inner convolutions) measuring 15-18 % above the table. This script
times that family beside controls in one interleaved run, so the error can be told apart
from the machine's drift (which moves every sub-net alike). Prints a table and writes JSON.

    python tools/check_table_bias.py --out results/table_bias_resnet20.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FAMILY = [(8, 16, 16, 16, 16, 16, 16, 16, 48, 16, 16, 24), (8, 16, 16, 16, 16, 16, 16, 16, 32, 48, 64, 32),
          (8, 16, 16, 16, 16, 16, 16, 16, 32, 48, 64, 64), (8, 16, 16, 16, 32, 32, 24, 24, 32, 64, 24, 24)]
CONTROLS = [(4, 4, 4, 4, 8, 8, 8, 8, 16, 16, 16, 16), (8, 8, 8, 8, 16, 16, 16, 16, 32, 32, 32, 32),
            (16, 16, 16, 16, 16, 16, 16, 16, 48, 16, 16, 24), (16, 16, 16, 16, 32, 16, 16, 16, 48, 64, 64, 24),
            (16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64)]


def main(argv: list[str] | None = None) -> int:
    import bench_search
    from edgedyn.artifacts import atomic_write_json
    from edgedyn.profile import LatencyTable

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="profiles/cpu-resnet20.json")
    p.add_argument("--out", default="results/table_bias_resnet20.json")
    p.add_argument("--measure-ms", type=float, default=2000.0)
    args = p.parse_args(argv)
    table = LatencyTable.load(args.table)
    bargs = bench_search.parse_args(["--table", args.table, "--measure-ms", str(args.measure_ms)])
    timing = bench_search.measure_all(FAMILY + CONTROLS, bargs, table, lambda m: print(m, file=sys.stderr))
    full = timing[CONTROLS[-1]]
    rows = []
    print(f"{'sub-net':<48}{'kind':>9}{'pred ms':>9}{'meas ms':>9}{'error':>8}{'frac pred':>10}{'frac meas':>10}")
    for spec in FAMILY + CONTROLS:
        t = timing[spec]
        row = {"widths": list(spec), "kind": "family" if spec in FAMILY else "control",
               "predicted_ms": t["predicted"], "measured_ms": t["median"],
               "error_pct": 100 * (t["median"] / t["predicted"] - 1)}
        rows.append(row)
        print(f"{str(list(spec)):<48}{row['kind']:>9}{t['predicted']:>9.3f}{t['median']:>9.3f}"
              f"{row['error_pct']:>7.1f}%{t['predicted'] / full['predicted']:>10.3f}{t['median'] / full['median']:>10.3f}")
    atomic_write_json(Path(args.out), {"schema": "edgedyn.table_bias/1", "table": args.table,
                                      "cpu_busy_before_timing": timing["busy"], "rows": rows})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
