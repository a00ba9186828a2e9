from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from edge_agent.contracts.baseline import Baseline
from edge_agent.contracts.bundle import (
    BundleError,
    generate_keypair,
    load_private_key,
    load_public_key,
    read_bundle,
    write_bundle,
)
from edge_agent.contracts.manifest import ModelManifest, version_key
from tests.support.models import linear_bundle


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    private, public = generate_keypair()
    (tmp_path / f"{name}.key").write_bytes(private)
    (tmp_path / f"{name}.pub").write_bytes(public)
    return tmp_path / f"{name}.key", tmp_path / f"{name}.pub"


def _rewrite(path: Path, change: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    files.update(change)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)


def _signed(tmp_path: Path) -> tuple[Path, Path]:
    private, public = _keys(tmp_path, "fleet")
    unsigned = read_bundle(linear_bundle(tmp_path / "plain.bundle"))
    path = tmp_path / "signed.bundle"
    write_bundle(path, unsigned.manifest, unsigned.files, load_private_key(private))
    return path, public


def test_signed_bundle_verifies(tmp_path: Path) -> None:
    path, public = _signed(tmp_path)
    bundle = read_bundle(path, load_public_key(public))
    assert bundle.signed and bundle.manifest.label == "linear@1"


def test_one_byte_of_the_model_changed_names_the_file(tmp_path: Path) -> None:
    path, public = _signed(tmp_path)
    model = bytearray(read_bundle(path).files["model.onnx"])
    model[len(model) // 2] ^= 0x01
    _rewrite(path, {"model.onnx": bytes(model)})
    with pytest.raises(BundleError, match=r"model\.onnx does not match its sha256"):
        read_bundle(path, load_public_key(public))


def test_edited_manifest_breaks_the_signature(tmp_path: Path) -> None:
    path, public = _signed(tmp_path)
    manifest = json.loads(read_bundle(path).manifest_bytes)
    manifest["version"] = "2"
    _rewrite(path, {"manifest.json": json.dumps(manifest).encode()})
    with pytest.raises(BundleError, match="signature does not match"):
        read_bundle(path, load_public_key(public))


def test_wrong_key_and_missing_signature_are_refused(tmp_path: Path) -> None:
    path, _ = _signed(tmp_path)
    _, other = _keys(tmp_path, "other")
    with pytest.raises(BundleError, match="signature does not match"):
        read_bundle(path, load_public_key(other))
    with pytest.raises(BundleError, match="not signed"):
        read_bundle(linear_bundle(tmp_path / "plain2.bundle"), load_public_key(other))


def test_garbage_and_unexpected_files_are_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bundle"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(BundleError, match="not a readable bundle"):
        read_bundle(garbage)
    path = linear_bundle(tmp_path / "x.bundle")
    _rewrite(path, {"evil.sh": b"rm -rf /"})
    with pytest.raises(BundleError, match=r"unexpected files: evil\.sh"):
        read_bundle(path)


def test_manifest_validates_names_versions_and_formats() -> None:
    base = read_bundle_manifest()
    with pytest.raises(ValueError, match="neither a whole number"):
        ModelManifest.model_validate(base | {"version": "v1"})
    with pytest.raises(ValueError, match="may hold only"):
        ModelManifest.model_validate(base | {"name": "../etc"})
    with pytest.raises(ValueError, match=r"model.tflite has no hash"):
        ModelManifest.model_validate(base | {"formats": ["onnx", "tflite"]})
    assert version_key("10") > version_key("9") > version_key("1.2.3") > version_key("1.2.3-rc1")


def read_bundle_manifest() -> dict[str, object]:
    return {
        "name": "m",
        "version": "1",
        "created": "2026-01-01T00:00:00+00:00",
        "source_framework": "onnx",
        "converter_version": "t",
        "formats": ["onnx"],
        "inputs": [{"name": "a"}],
        "outputs": [{"name": "y", "kind": "regression"}],
        "files": {"model.onnx": "0" * 64},
    }


def test_a_manifest_or_baseline_of_an_unknown_layout_is_refused_by_name(tmp_path: Path) -> None:
    path = linear_bundle(tmp_path / "newer.bundle")
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    _rewrite(path, {"manifest.json": json.dumps(manifest | {"schema_version": 2}).encode()})
    with pytest.raises(BundleError, match=r"manifest schema_version 2 is not supported"):
        read_bundle(path)

    baseline = {"features": {}, "schema_version": 7}
    with pytest.raises(ValueError, match=r"baseline schema_version 7 is not supported"):
        Baseline.model_validate(baseline)
    assert Baseline.model_validate(baseline | {"schema_version": 1}).schema_version == 1
