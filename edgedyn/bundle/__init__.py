"""A deployed bundle's format, shared by the side that writes it (:mod:`edgedyn.deploy`) and the
side that reads it (:mod:`edgedyn.runtime`): the manifest (``manifest.json``, schema
``"edgedyn.bundle/1"``) and the sha256 records of the files it lists.

Neither side imports the other; both import this package, which imports neither.
"""

from .files import file_record, read_verified, sha256_file, verify_files
from .manifest import BUNDLE_SCHEMA, MANIFEST_NAME, Manifest, SubnetRecord
from .signature import SIGNATURE_NAME, load_manifest, sign_bundle

__all__ = ["BUNDLE_SCHEMA", "MANIFEST_NAME", "SIGNATURE_NAME", "Manifest", "SubnetRecord", "file_record",
           "load_manifest", "read_verified", "sha256_file", "sign_bundle", "verify_files"]
