"""Deployment: a search run -> a bundle of per-sub-net artifacts with a verified manifest.

``deploy(run_dir, backend, precision, ...)`` builds the bundle (:mod:`~edgedyn.deploy.build`,
in stages: export, quantize, check, time, manifest); ``load_run`` is the one reader of search
results (:mod:`~edgedyn.deploy.source`). The bundle's format (``Manifest``, ``verify_files``)
lives in :mod:`edgedyn.bundle`, which the runtime reads too; it is re-exported here.
"""

from ..bundle import BUNDLE_SCHEMA, MANIFEST_NAME, Manifest, SubnetRecord, sha256_file, verify_files
from .build import SUPPORTED, deploy
from .source import RunInfo, RunSubnet, load_run
from .timing import measure_runners

__all__ = ["BUNDLE_SCHEMA", "MANIFEST_NAME", "SUPPORTED", "Manifest", "RunInfo", "RunSubnet", "SubnetRecord",
           "deploy", "load_run", "measure_runners", "sha256_file", "verify_files"]
