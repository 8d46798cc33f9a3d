"""Deployment: a search run -> a bundle of per-sub-net artifacts with a verified manifest.

``deploy(run_dir, backend, precision, ...)`` builds the bundle; ``Manifest.load`` and
``verify_files`` read and check it; ``load_run`` is the one reader of search results.
"""

from .build import SUPPORTED, deploy, measure_runners
from .manifest import BUNDLE_SCHEMA, MANIFEST_NAME, Manifest, SubnetRecord, sha256_file, verify_files
from .run import RunInfo, RunSubnet, load_run

__all__ = ["BUNDLE_SCHEMA", "MANIFEST_NAME", "SUPPORTED", "Manifest", "RunInfo", "RunSubnet", "SubnetRecord",
           "deploy", "load_run", "measure_runners", "sha256_file", "verify_files"]
