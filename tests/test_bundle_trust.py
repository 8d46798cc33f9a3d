"""Bundles that can be trusted (issue 23): ``deploy --sign`` writes an HMAC-SHA256 over the
manifest, ``run --verify-key`` / ``Selector.load(verify_key=...)`` refuse unsigned, wrongly signed
or tampered bundles in one line, and the selector serves the bytes it verified, never a file
reopened after the check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgedyn.backends.base import BackendOptions
from edgedyn.backends.onnxruntime import OrtRunner
from edgedyn.bundle import SIGNATURE_NAME, Manifest, sign_bundle
from edgedyn.cli import cli
from edgedyn.deploy import deploy
from edgedyn.errors import EdgedynError
from edgedyn.runtime import Selector
from test_deploy import FAST, fast_export, make_run_dir  # noqa: F401 - fixture re-used

X = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    (d / "good.key").write_bytes(bytes(range(32)))
    (d / "other.key").write_bytes(bytes(range(1, 33)))
    return d / "good.key", d / "other.key"


@pytest.fixture(scope="module")
def signed(tmp_path_factory, fast_export, keys) -> Path:  # noqa: F811
    run = make_run_dir(tmp_path_factory.mktemp("trust") / "run", ratios=(0.25, 1.0))
    out = tmp_path_factory.mktemp("trust") / "bundle"
    deploy(run, out=out, threads=1, sign=keys[0], **FAST)
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)  # follows the bundle's link: a plain folder
    return dst


def _one_line(info: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(info.value)
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, (needle, text)


def test_signed_bundle_loads_with_its_key_and_the_signature_is_versioned(signed: Path, keys) -> None:
    sig = json.loads((signed / SIGNATURE_NAME).read_text())
    assert sig["schema"] == "edgedyn.bundle_signature/1" and sig["algorithm"] == "hmac-sha256"
    assert len(sig["signature"]) == 64 and bytes(range(32)).hex() not in json.dumps(sig)
    with Selector.load(signed, verify_key=keys[0]) as sel:
        assert sel.infer(X)[0].shape == (1, 10)
    with Selector.load(signed, verify_key=keys[0].read_bytes()) as sel:  # the key's bytes themselves
        assert sel.infer(X)[0].shape == (1, 10)
    res = CliRunner().invoke(cli, ["run", "--bundle", str(signed), "--requests", "3", "--verify-key", str(keys[0])])
    assert res.exit_code == 0, res.output


def test_unsigned_and_wrongly_signed_bundles_are_refused(signed: Path, keys, tmp_path: Path) -> None:
    b = _copy(signed, tmp_path)
    with pytest.raises(EdgedynError) as info:
        Selector.load(b, verify_key=keys[1])
    _one_line(info, SIGNATURE_NAME, "signed with another key")
    (b / SIGNATURE_NAME).unlink()
    with pytest.raises(EdgedynError) as info:
        Selector.load(b, verify_key=keys[0])
    _one_line(info, SIGNATURE_NAME, "not signed")
    Selector.load(b).close()  # without a key: integrity only, as before
    res = CliRunner().invoke(cli, ["run", "--bundle", str(b), "--requests", "3", "--verify-key", str(keys[0])])
    errors = [ln for ln in res.output.splitlines() if ln.startswith("error: ")]
    assert res.exit_code == 2 and len(errors) == 1 and "not signed" in errors[0], res.output
    short = tmp_path / "short.key"
    short.write_bytes(b"secret\n")
    with pytest.raises(EdgedynError) as info:
        Selector.load(signed, verify_key=short)
    _one_line(info, "at least 16 bytes")


def test_a_flipped_byte_is_refused_signed_or_not(signed: Path, keys, tmp_path: Path) -> None:
    b = _copy(signed, tmp_path)
    target = b / Manifest.load(b).subnets[0].model_file
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    for key in (keys[0], None):
        with pytest.raises(EdgedynError) as info:
            Selector.load(b, verify_key=key)
        _one_line(info, target.name, "does not match", "modified")


def test_a_rehashed_tampered_file_is_caught_by_the_signature_only(signed: Path, keys, tmp_path: Path) -> None:
    b = _copy(signed, tmp_path)
    doc = json.loads((b / "manifest.json").read_text())
    rec = doc["subnets"][0]["files"]["model"]
    target = b / rec["path"]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    rec["sha256"] = hashlib.sha256(bytes(data)).hexdigest()  # the attacker fixes the manifest up
    (b / "manifest.json").write_text(json.dumps(doc, indent=1))
    Manifest.load(b)  # integrity alone cannot tell
    with pytest.raises(EdgedynError) as info:
        Selector.load(b, verify_key=keys[0], allow_other_device=True)
    _one_line(info, SIGNATURE_NAME, "modified after it was signed")
    # re-indenting a signed manifest keeps it valid: the signature covers its canonical form
    c = _copy(signed, tmp_path / "again")
    (c / "manifest.json").write_text(json.dumps(json.loads((c / "manifest.json").read_text()), indent=4))
    Selector.load(c, verify_key=keys[0]).close()


def test_the_selector_serves_the_bytes_it_verified(signed: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import edgedyn.runtime.loading as loading

    b = _copy(signed, tmp_path)
    m = Manifest.load(b)
    small, large = (b / s.model_file for s in m.subnets)
    original = small.read_bytes()
    real = loading.read_models

    def read_then_swap(manifest):  # an attacker swaps a model right after the check
        verified = real(manifest)
        small.write_bytes(large.read_bytes())
        return verified

    monkeypatch.setattr(loading, "read_models", read_then_swap)
    with Selector.load(b, "fixed", subnet=0) as sel:
        served = sel.infer(X)[0]
    want = OrtRunner(original, BackendOptions(threads=1)).infer(X)
    swapped = OrtRunner(str(large), BackendOptions(threads=1)).infer(X)
    assert np.allclose(served, want, atol=1e-5) and not np.allclose(served, swapped, atol=1e-3)


def test_a_backend_that_loads_paths_gets_a_private_copy_of_the_verified_bytes(signed: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import edgedyn.backends as backends
    from edgedyn.runtime.loading import load_runners, read_models

    seen: list[tuple[Path, bytes]] = []

    class PathOnly:  # as TensorRT: loads engines from paths only
        def version(self) -> str:
            return "1"

        def load_for_serving(self, paths, shape):
            seen.extend((Path(p), Path(p).read_bytes()) for p in paths)
            return [object() for _ in paths], None

    monkeypatch.setattr(backends, "get_backend", lambda name, options: PathOnly())
    m = Manifest.load(signed)
    verified = read_models(m)
    load_runners(m, models=verified)
    assert [data for _, data in seen] == verified
    assert all(signed.resolve() not in p.parents and not p.exists() for p, _ in seen)  # private, and removed


def test_sign_bundle_signs_what_the_manifest_holds(signed: Path, keys, tmp_path: Path) -> None:
    b = _copy(signed, tmp_path)
    doc = json.loads((b / "manifest.json").read_text())
    doc["notes"] = ["changed after signing"]
    (b / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(EdgedynError, match="modified after it was signed"):
        Selector.load(b, verify_key=keys[0])
    sign_bundle(b, keys[0])  # the owner of the key re-signs
    Selector.load(b, verify_key=keys[0]).close()


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("signature"), lambda d: d.update(signature=None), lambda d: d.update(signature="é" * 64),
    lambda d: d.update(signature=d["signature"][::-1]), lambda d: d.update(algorithm="md5"),
    lambda d: d.update(schema="edgedyn.bundle_signature/2"), lambda d: d.pop("schema"),
    "not json", "[" * 100_000, "",
])
def test_a_malformed_signature_file_is_one_line(signed: Path, keys, tmp_path: Path, mutate) -> None:
    b = _copy(signed, tmp_path)
    sig = b / SIGNATURE_NAME
    if isinstance(mutate, str):
        sig.write_text(mutate)
    else:
        doc = json.loads(sig.read_text())
        mutate(doc)
        sig.write_text(json.dumps(doc))
    with pytest.raises(EdgedynError) as info:
        Selector.load(b, verify_key=keys[0])
    _one_line(info, SIGNATURE_NAME)


def test_the_key_id_only_names_the_key(signed: Path, keys, tmp_path: Path) -> None:
    b = _copy(signed, tmp_path)
    doc = json.loads((b / SIGNATURE_NAME).read_text())
    doc["key_id"] = [1, 2]  # not signed data: the signature alone decides
    (b / SIGNATURE_NAME).write_text(json.dumps(doc))
    Selector.load(b, verify_key=keys[0]).close()
    with pytest.raises(EdgedynError, match="signature does not match"):
        Selector.load(b, verify_key=keys[1])
