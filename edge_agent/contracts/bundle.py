"""The model bundle file: a zip of the model(s), manifest, baseline, golden vectors and signature.

The converters write bundles, the fleet checks them before publishing, the agent checks them again
before it loads anything. Nothing in a bundle is ever unpickled: the manifest and baseline are JSON
and the golden vectors are a NumPy ``.npz`` read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import ValidationError

from edge_agent.contracts.manifest import ModelManifest

__all__ = [
    "ALLOWED_FILES",
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "Bundle",
    "BundleError",
    "generate_keypair",
    "load_private_key",
    "load_public_key",
    "read_bundle",
    "sha256_hex",
    "write_bundle",
]

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature"
ALLOWED_FILES = frozenset(
    {"model.onnx", "model.tflite", "baseline.json", "golden.npz", MANIFEST_FILE, SIGNATURE_FILE}
)
# A bundle larger than this once unpacked is refused before it is read (zip bombs).
MAX_UNPACKED_BYTES = 512 * 1024 * 1024


class BundleError(Exception):
    """A bundle is unreadable, incomplete, tampered with or wrongly signed (the message says)."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Bundle:
    """A bundle in memory with every hash checked; ``signed`` says whether a key checked it."""

    manifest: ModelManifest
    manifest_bytes: bytes
    files: dict[str, bytes]
    signature: bytes | None
    signed: bool

    def file(self, name: str) -> bytes:
        try:
            return self.files[name]
        except KeyError:
            raise BundleError(f"bundle {self.manifest.label} has no {name}") from None


def generate_keypair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as (private PEM, public PEM)."""
    private = Ed25519PrivateKey.generate()
    private_pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BundleError(f"cannot read private key {path}: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError, TypeError) as err:
        raise BundleError(f"cannot read public key {path}: {err}") from err
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"{path} is not an Ed25519 public key")
    return key


def write_bundle(
    path: Path,
    manifest: ModelManifest,
    files: dict[str, bytes],
    private_key: Ed25519PrivateKey | None = None,
) -> ModelManifest:
    """Write ``files`` and ``manifest`` (its ``files`` hashes recomputed) to ``path``.

    Signed when a key is given. Returns the manifest as written. The file appears atomically
    (temp file, then rename)."""
    unknown = sorted(set(files) - ALLOWED_FILES)
    if unknown:
        raise BundleError(f"files not allowed in a bundle: {', '.join(unknown)}")
    hashes = {name: sha256_hex(data) for name, data in sorted(files.items())}
    final = manifest.model_copy(update={"files": hashes})
    final = ModelManifest.model_validate(final.model_dump())  # re-run the consistency checks
    manifest_bytes = final.model_dump_json(indent=2).encode()
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(MANIFEST_FILE, manifest_bytes)
        for name, data in sorted(files.items()):
            archive.writestr(name, data)
        if private_key is not None:
            archive.writestr(SIGNATURE_FILE, private_key.sign(manifest_bytes))
    tmp.replace(path)
    return final


def read_bundle(
    source: Path | bytes,
    public_key: Ed25519PublicKey | None = None,
    *,
    require_signature: bool = False,
) -> Bundle:
    """Read a bundle; check every file against its hash in the manifest and, with a key, the
    signature.

    Raises BundleError naming the file whose hash differs, a missing file, or a bad signature.
    """
    label = str(source) if isinstance(source, Path) else "bundle"
    try:
        archive = zipfile.ZipFile(source if isinstance(source, Path) else io.BytesIO(source))
    except (OSError, zipfile.BadZipFile) as err:
        raise BundleError(f"{label} is not a readable bundle (zip): {err}") from err
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        unexpected = sorted(set(names) - ALLOWED_FILES)
        if unexpected:
            raise BundleError(f"{label} holds unexpected files: {', '.join(unexpected)}")
        if len(set(names)) != len(names):
            raise BundleError(f"{label} holds the same file twice")
        if sum(info.file_size for info in infos) > MAX_UNPACKED_BYTES:
            raise BundleError(f"{label} unpacks to more than {MAX_UNPACKED_BYTES} bytes")
        if MANIFEST_FILE not in names:
            raise BundleError(f"{label} has no {MANIFEST_FILE}")
        try:
            contents = {name: archive.read(name) for name in names}
        except (OSError, zipfile.BadZipFile) as err:
            raise BundleError(f"{label} is damaged: {err}") from err

    manifest_bytes = contents.pop(MANIFEST_FILE)
    signature = contents.pop(SIGNATURE_FILE, None)
    signed = False
    if public_key is not None:
        if signature is None:
            raise BundleError(f"{label} is not signed, and this key requires a signature")
        try:
            public_key.verify(signature, manifest_bytes)
        except InvalidSignature:
            raise BundleError(
                f"{label}: the signature does not match the manifest for this public key "
                "(wrong key, or the manifest was edited)"
            ) from None
        signed = True
    elif require_signature:
        raise BundleError(f"{label}: a public key is needed to check the signature")

    try:
        manifest = ModelManifest.model_validate_json(manifest_bytes)
    except ValidationError as err:
        raise BundleError(f"{label}: {MANIFEST_FILE} is invalid: {err}") from err

    for name, expected in manifest.files.items():
        if name not in contents:
            raise BundleError(f"{label}: {name} is listed in the manifest but missing")
        if sha256_hex(contents[name]) != expected:
            raise BundleError(f"{label}: {name} does not match its sha256 in the manifest")
    unlisted = sorted(set(contents) - set(manifest.files))
    if unlisted:
        raise BundleError(f"{label}: {', '.join(unlisted)} not listed in the manifest")
    return Bundle(manifest, manifest_bytes, contents, signature, signed)
