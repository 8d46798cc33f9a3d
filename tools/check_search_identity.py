"""Same seed, same ``subnets.json``: the three search methods on short runs, against goldens.

The search's behaviour is pinned by a short run of each method (``autoslim``, ``progressive``,
``usnet``) on the ``synthetic`` task: its ``subnets.json``, less the fields that cannot repeat
(``timings``: wall and CPU seconds) or that name the run's own directory (``config.out``), and
the sha256 of every tensor of its ``weights.pt``. A refactor of ``edgedyn/search`` must leave
them byte for byte as they were.

    python tools/check_search_identity.py --write tests/golden/search/avx2   # record (before a change)
    python tools/check_search_identity.py --check tests/golden/search/avx2   # compare (after it)

``tests/test_search_identity.py`` runs the check against the goldens of this CPU's PyTorch
capability (``torch.backends.cpu.get_cpu_capability()``: avx2, avx512). Goldens are for this
project's pinned torch; another torch build or vector ISA rounds differently, and then they
are recorded for it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

METHODS = ("autoslim", "progressive", "usnet")


class StepLatency:
    """A deterministic stand-in latency table (no file, no machine): per fused block a cost
    that steps at multiples of 8 channels, so it ranks removals differently from MACs."""

    name = "latency"
    unit = "ms"

    def cost(self, net: Any, spec: Any) -> float:
        from edgedyn.profile.blocks import subnet_keys

        total = 0.0
        for k in subnet_keys(net, spec):
            ci, co = math.ceil(k.c_in / 8), math.ceil(k.c_out / 8)
            area = (k.in_h * k.in_w) ** 0.5
            if k.op == "conv":
                total += 0.02 + 0.004 * ci * co * k.kernel * area ** 0.5 / (2.0 if k.stride > 1 else 1.0)
            else:
                total += 0.01 + 0.001 * ci * area
        return round(total, 6)


def settings(method: str, out: Path) -> dict[str, Any]:
    """The short run's settings (fixed: changing them re-records the goldens)."""
    return dict(model="resnet20", data="synthetic", data_limit=240, input_size=16, channel_groups=4,
                budgets="0.35,0.6,1.0", method=method, threshold="drop:10", pretrain_epochs=1, rank_epochs=1,
                train_epochs=3, batches_per_epoch=3, batch_size=32, finetune_batches=2, finetune_check=2,
                calib_batches=2, search_calib_batches=1, score_samples=20, max_steps=None, seed=7, out=str(out))


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """The run's ``subnets.json`` less timings and its own path, and its weights' sha256s."""
    import torch

    doc = json.loads((run_dir / "subnets.json").read_text())
    doc.pop("timings", None)
    doc["config"].pop("out", None)
    blob = torch.load(run_dir / "weights.pt", map_location="cpu", weights_only=True)
    state = blob["state_dict"] if isinstance(blob, dict) and "state_dict" in blob else blob
    digests = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
               for k, v in sorted(state.items())}
    return {"subnets.json": doc, "weights_sha256": digests}


def run_one(method: str, work: Path) -> dict[str, Any]:
    import torch

    from edgedyn import search

    torch.set_num_threads(1)
    out = work / method
    config = search.SearchConfig(**settings(method, out))
    search.run_search(config, StepLatency())
    return fingerprint(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, help="record the goldens into this folder")
    mode.add_argument("--check", type=Path, help="compare against the goldens in this folder")
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            got = json.dumps(run_one(method, Path(tmp)), indent=1, sort_keys=True) + "\n"
            if args.write:
                args.write.mkdir(parents=True, exist_ok=True)
                (args.write / f"{method}.json").write_text(got)
                print(f"{method}: recorded")
                continue
            want = (args.check / f"{method}.json").read_text()
            same = got == want
            print(f"{method}: {'identical' if same else 'DIFFERENT'}")
            if not same:
                failed.append(method)
                import difflib

                sys.stdout.writelines(list(difflib.unified_diff(want.splitlines(True), got.splitlines(True),
                                                                "golden", "now", n=1))[:60])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
