"""Reading a search run directory (``subnets.json`` + ``weights.pt``) for deployment.

All knowledge of the search result format (``edgedyn.search_result/1``, written by
:mod:`edgedyn.search.pipeline`) lives in :func:`load_run`. A sub-net whose record names a
``weights`` file of its own (``torch-pruning``'s pruned models, ``weights.pick<k>.pt``) is
served by that file's network (:meth:`RunInfo.net_for`); every other one by ``weights.pt``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import load_json, require
from ..dynamic import DynamicNet, SubnetSpec
from ..errors import ArtifactError, EdgedynError
from ..validate_weights import load_net

RESULT_SCHEMA = "edgedyn.search_result/1"
log = logging.getLogger("edgedyn.deploy")


@dataclass
class RunSubnet:
    """One chosen sub-net of a search run."""

    index: int
    spec: SubnetSpec
    budget: dict[str, Any] | None
    cost: float | None
    macs: int
    params: int
    holdout_accuracy: float | None
    test_accuracy: float | None
    weights: str | None = None  # the file of its own network, in the run directory (None: weights.pt)


@dataclass
class RunInfo:
    """What deploy needs from a search run."""

    path: Path
    net: DynamicNet
    subnets: list[RunSubnet]
    cost_unit: str | None
    data: dict[str, Any] = field(default_factory=dict)  # spec, input_size, seed, holdout_fraction, limit
    table: str | None = None
    doc: dict[str, Any] = field(default_factory=dict)
    own: dict[str, DynamicNet] = field(default_factory=dict)  # a sub-net's own weights file -> its network

    @property
    def signature(self) -> str:
        return self.net.signature()

    def net_for(self, spec: SubnetSpec) -> DynamicNet:
        """The network whose weights serve ``spec``: its own file's, else ``weights.pt``'s."""
        for sub in self.subnets:
            if sub.spec == spec and sub.weights is not None:
                return self.own[sub.weights]
        return self.net


def _num(obj: dict, key: str) -> float | None:
    v = obj.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def load_run(path: str | os.PathLike) -> RunInfo:
    """Load ``runs/NAME/`` (or its ``subnets.json``): the network, its chosen sub-nets and data settings.

    Raises :class:`ArtifactError` (one line naming the file and field) for a missing or
    malformed file, a signature mismatch or a spec that does not fit the network.
    """
    path = Path(path)
    run_dir = path if path.is_dir() else path.parent
    doc_path = run_dir / "subnets.json" if path.is_dir() else path
    doc = load_json(doc_path, RESULT_SCHEMA)
    where = str(doc_path)
    from ..validate import validate_search_result

    validate_search_result(doc, where)  # every number finite and in its range
    weights = run_dir / "weights.pt"
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file not found (the search run writes it next to subnets.json)")
    net = load_net(weights)  # a tampered weights.pt fails in one line
    signature = doc.get("signature")
    if signature is not None and signature != net.signature():
        raise ArtifactError(f"{where}: field 'signature' {signature!r} does not match {weights} ({net.signature()!r})")
    raw = require(doc, "subnets", list, where)
    if not raw:
        raise ArtifactError(f"{where}: field 'subnets' is empty")
    cost: dict[str, Any] = doc["cost"] if isinstance(doc.get("cost"), dict) else {}
    subnets = []
    own: dict[str, DynamicNet] = {}
    for i, s in enumerate(raw):
        w = f"{where}: subnets[{i}]"
        if not isinstance(s, dict):
            raise ArtifactError(f"{w}: must be an object")
        spec = SubnetSpec.from_dict(s.get("spec", s), w)
        name = _own_weights(s, run_dir, w)
        if name is not None and name not in own:
            own[name] = _load_own(run_dir / name, net, f"{w}.weights")
        serving = own[name] if name is not None else net
        try:
            serving.check_spec(spec)
        except EdgedynError as err:
            raise ArtifactError(f"{w}: {err}") from None
        if spec not in serving.bn_stats:
            log.warning("%s: sub-net %s has no calibrated BatchNorm statistics; using the shared ones", w, spec)
        subnets.append(RunSubnet(
            index=i, spec=spec, budget=s.get("budget"), cost=_num(s, "cost"),
            macs=int(s["macs"]) if isinstance(s.get("macs"), int) else net.macs(spec),
            params=int(s["params"]) if isinstance(s.get("params"), int) else net.params(spec),
            holdout_accuracy=_num(s, "holdout_accuracy"), test_accuracy=_num(s, "test_accuracy"),
            weights=name,
        ))
    _one_network_per_spec(subnets, where)
    config: dict[str, Any] = doc["config"] if isinstance(doc.get("config"), dict) else {}
    data = {
        "spec": config.get("data", "digits"),
        "input_size": int(net.input_shape[-1]),
        "seed": int(config.get("seed", 0)),
        "holdout_fraction": float(config.get("holdout_fraction", 0.1)),
        "limit": config.get("data_limit"),
    }
    table = doc.get("table")
    if isinstance(table, dict):
        table = table.get("path")
    return RunInfo(path=run_dir, net=net, subnets=subnets, cost_unit=cost.get("unit"), data=data,
                   table=table if isinstance(table, str) else None, doc=doc, own=own)


def _own_weights(sub: dict[str, Any], run_dir: Path, where: str) -> str | None:
    """A sub-net record's own ``weights`` file: a plain file name in the run directory, or None."""
    name = sub.get("weights")
    if name is None:
        return None
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\0" in name or not name.endswith(".pt")):
        raise ArtifactError(f"{where}: field 'weights' must name a .pt file in the run directory, got {repr(name)[:80]}")
    if not (run_dir / name).is_file():
        raise ArtifactError(f"{where}: field 'weights': {run_dir / name} not found (the search run writes it)")
    return name


def _load_own(path: Path, net: DynamicNet, where: str) -> DynamicNet:
    """A sub-net's own network (checked as ``weights.pt`` is); it must be the run's architecture."""
    own = load_net(path)  # a tampered file fails in one line
    if own.signature() != net.signature():
        raise ArtifactError(f"{where}: {path} is a different network ({own.signature()!r}) from the run's "
                            f"weights.pt ({net.signature()!r})")
    return own


def _one_network_per_spec(subnets: list[RunSubnet], where: str) -> None:
    """Deploy builds one artifact per distinct sub-net: two records of one spec must share their weights."""
    seen: dict[SubnetSpec, RunSubnet] = {}
    for sub in subnets:
        first = seen.setdefault(sub.spec, sub)
        if first.weights != sub.weights:
            raise ArtifactError(f"{where}: subnets[{sub.index}] field 'weights' is {sub.weights!r}, but "
                                f"subnets[{first.index}] (the same sub-net) has {first.weights!r}")
