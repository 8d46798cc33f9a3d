"""Deploy's re-check: the table's probes timed beside the built sub-nets, before the ±10% check.

A table is a snapshot of one machine state; the machine deploy runs on has moved since
(:mod:`edgedyn.profile.states`). Deploy therefore builds the table's probes for this model
(the stored ones, else :func:`~edgedyn.profile.states.probe_specs`), times them in the same
interleaved run as the sub-nets it deploys, fits the correction from the table's prediction
to the probes (:func:`~edgedyn.profile.states.fit_correction`) and checks each sub-net against
the re-checked prediction. Both errors are reported: against the table as it was, and
against the re-checked table. Where the correction cannot be trusted
(:func:`~edgedyn.profile.states.trust_problem`), the check falls back to the table as it was
and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: probes deploy times beside the sub-nets (spread smallest to full)
DEPLOY_PROBES = 8


def probe_specs_for(table: Any, net: Any, k: int = DEPLOY_PROBES) -> list[Any]:
    """``k`` probes of ``net``: those ``table`` stores (its active state's, else any), else
    chosen now; spread from the smallest to the full model."""
    from ..dynamic import SubnetSpec
    from ..profile.states import probe_specs, spread_subset

    sig = net.arch_signature()
    state = table.current_state()
    states = ([state] if state is not None else []) + list(table.states.values())
    for st in states:
        mp = st.models.get(sig)
        if mp is not None and len(mp.probes) >= 2:
            specs = [net.check_spec(SubnetSpec(tuple(int(w) for w in p["widths"]))) for p in mp.probes]
            return [specs[i] for i in spread_subset(len(specs), k)]
    return probe_specs(net, k)


def build_probes(be: Any, net: Any, specs: Sequence[Any], tmp: Path) -> list[Any]:
    """Activated runners of the probes, built in ``tmp/probes`` (removed with the build folder)."""
    import torch

    root = Path(tmp) / "probes"
    workdirs = [root / str(i) for i in range(len(specs))]
    for wd in workdirs:
        wd.mkdir(parents=True)
    example = torch.zeros(1, *net.input_shape[1:])
    return [r.activate() for r in be.prepare_subnets(net, list(specs), example, workdirs)]


def recheck_report(table: Any, net: Any, specs: Sequence[Any], probe_ms: Sequence[float]) -> dict[str, Any]:
    """The correction from ``table``'s prediction to the probes timed now, and whether it is trusted."""
    from ..profile.states import fit_correction, trust_problem

    predicted = np.array([table.predict(net, s) for s in specs])
    report = fit_correction(predicted, np.asarray(probe_ms, float))
    problem = trust_problem(report, predicted)
    out: dict[str, Any] = {"probes": len(specs), "correction": report.correction.to_dict(), **report.to_dict(),
                           "trusted": problem is None}
    if problem is not None:
        out["problem"] = problem
    return out


def apply_recheck(recheck: dict[str, Any], predicted_ms: float | None) -> float | None:
    """A sub-net's re-checked prediction (None where there is no trusted correction)."""
    from ..profile.states import Correction

    if predicted_ms is None or not recheck.get("trusted"):
        return None
    return Correction.from_dict(recheck["correction"], "recheck").apply(float(predicted_ms))


def state_scales(table: Any, net: Any, records: Sequence[Any]) -> dict[str, Any]:
    """The manifest's ``states``: for each machine state ``table`` holds, each deployed
    sub-net's predicted latency there over its prediction in the state deployed in (the
    runtime scales its latencies by these when the machine changes state). Empty for a table
    without states."""
    if table is None or not table.states:
        return {}
    here = table.current_state()
    base = [table.predict(net, r.spec) for r in records]
    by_id = {sid: {"label": st.label(), "key": st.key,
                   "scale": [round(table.predict_in(sid, net, r.spec) / b, 5) for r, b in zip(records, base)]}
             for sid, st in table.states.items()}
    return {"deployed": here.id if here is not None else None, "by_id": by_id}
