"""An interrupted profile's ``<out>.partial.json``: the settings its timings were taken with,
compared with a resumed run's before any timing is reused.

Whole-network timings are keyed by widths alone, so a partial profiled at another input
size, batch, precision or backend would silently lend its timings to the wrong table. The
partial records the run's :class:`~edgedyn.profile.config.ProfileConfig` (as text, under
``config``); :func:`check_resume_settings` refuses, in one line naming the setting, a
resume whose settings differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ArtifactError, EdgedynError
from .config import ProfileConfig

__all__ = ["COMPARED", "PARTIAL_SCHEMA", "check_resume_settings", "recorded_settings"]

PARTIAL_SCHEMA = "edgedyn.profile_partial/1"

#: The settings every timing depends on (``threads`` only when both runs name a count: a
#: resume without ``--threads`` takes the partial's).
COMPARED = ("model", "input_size", "num_classes", "channel_groups", "group_size", "min_groups", "device",
            "backend", "precision", "batch", "threads", "subsample", "roofline_device")


def _with_model_defaults(settings: dict[str, str]) -> dict[str, str]:
    """``None`` input size and class count replaced by the model's defaults (what the run used)."""
    from ..models import get_entry

    try:
        entry = get_entry(settings.get("model", ""))
    except EdgedynError:
        return settings
    for key, default in (("input_size", entry.default_input_size), ("num_classes", entry.default_num_classes)):
        if settings.get(key) == "None":
            settings[key] = str(default)
    return settings


def recorded_settings(cfg: ProfileConfig) -> dict[str, str]:
    """``cfg``'s compared settings as a partial file records them (text), model defaults filled in."""
    return _with_model_defaults({key: str(getattr(cfg, key)) for key in COMPARED})


def check_resume_settings(partial: Mapping[str, Any], cfg: ProfileConfig, where: Path) -> None:
    """Refuse (one line naming the setting) to resume ``partial`` with other settings than
    those it was profiled with. ``cfg`` is resolved (backend, precision, subsample filled in)."""
    recorded = partial.get("config")
    if not isinstance(recorded, Mapping):
        raise ArtifactError(f"{where}: field 'config' is missing or not an object, so the settings it was "
                            "profiled with are unknown; start afresh with --overwrite")
    theirs = _with_model_defaults({k: str(recorded[k]) for k in COMPARED if k in recorded})
    ours = recorded_settings(cfg)
    for key in COMPARED:
        if key not in theirs or theirs[key] == ours[key]:
            continue
        if key == "threads" and "None" in (theirs[key], ours[key]):
            continue
        flag = "--" + key.replace("_", "-")
        raise EdgedynError(f"{where}: cannot resume: it was profiled with {flag} {_shown(theirs[key])}, this run "
                           f"asks for {_shown(ours[key])}; resume with the same settings or start afresh with "
                           "--overwrite")


def _shown(value: str) -> str:
    text = value if len(value) <= 60 else value[:57] + "..."
    return "(default)" if text == "None" else text.replace("\n", " ")
