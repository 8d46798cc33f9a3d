"""Exceptions with one-line messages. The CLI prints ``str(err)`` and exits nonzero."""

from __future__ import annotations


class EdgedynError(Exception):
    """Base class: every expected failure (bad input, missing file, impossible budget)."""


class SpecError(EdgedynError, ValueError):
    """A sub-net spec that does not fit the network it is applied to."""


class ModelError(EdgedynError):
    """A model that edgedyn cannot make dynamic (names the offending layer)."""


class ArtifactError(EdgedynError):
    """A JSON artifact (table, run, manifest) that is missing, corrupt or of the wrong schema."""


class BackendUnavailable(EdgedynError):
    """An optional backend (TensorRT, CUDA, jetson-stats) that is not installed or has no device."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: it unwinds as Ctrl-C does
    (``finally`` blocks and ``except KeyboardInterrupt`` run, state is saved), and the CLI
    then exits 143 instead of 130."""
