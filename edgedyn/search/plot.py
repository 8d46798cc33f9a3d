"""The accuracy-against-cost plot of a run (and of runs to compare it with)."""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_bytes
from ..errors import ArtifactError
from .result import load_result

log = logging.getLogger("edgedyn.search")


def plot(doc: dict[str, Any], path: Path, others: Sequence[Path] = ()) -> Path:
    """Accuracy against cost: the search path (holdout) and the chosen sub-nets (test)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = doc["cost"]["unit"]
    fig, ax = plt.subplots(figsize=(6, 4))
    if doc["path"]:
        ax.plot([p["cost"] for p in doc["path"]], [100 * p["holdout_accuracy"] for p in doc["path"]],
                ".", color="0.7", label="search path (holdout)")
    label = f"{doc['config']['method']}/{doc['cost']['name']}"
    for name, d in [(label, doc)] + [(_label(o), _maybe(o)) for o in others]:
        if d is None or d["cost"]["unit"] != unit:
            continue
        pts = sorted((s["cost"], 100 * s["test_accuracy"]) for s in d["subnets"])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{name} (test)")
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _maybe(path: Path) -> dict[str, Any] | None:
    try:
        return load_result(path)
    except ArtifactError as err:
        log.warning("plot: skipping %s", err)
        return None


def _label(path: Path) -> str:
    d = _maybe(path)
    return path.name if d is None else f"{path.name}: {d['config']['method']}/{d['cost']['name']}"
