"""The model store on disk: one folder per version, an atomic ``active`` pointer, partial transfers.

Layout under ``<state_dir>/models``::

    <name>/<version>/bundle.zip     a received or imported bundle, exactly as signed
    <name>/<version>/sha256         its hash, so desired-state checks need not re-read it
    active.json                     {"model", "version", "history": [older versions, newest first]}
    refused.json                    bundle sha256 -> why it was refused or rolled back
    incoming/<name>@<version>/      offer.json and one file per received chunk, for resuming

Every file that a crash could leave half-written is written to a temporary name and renamed over
the old one (``os.replace`` is atomic on POSIX), so after a power cut the pointer names either the
old or the new version, never neither. Methods block on disk: the agent calls them off the event
loop, from one thread at a time.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.contracts.bundle import MANIFEST_FILE, sha256_hex
from edge_agent.contracts.manifest import ModelManifest, version_key
from edge_agent.contracts.payloads import OfferCommand
from edge_agent.errors import ModelError

__all__ = ["ActivePointer", "ModelStore", "Transfer"]

logger = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.zip"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    # The rename itself is durable only once the directory entry is on disk.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@dataclass(frozen=True)
class ActivePointer:
    """Which version serves, and the versions that served before it (newest first)."""

    model: str
    version: str
    history: list[str] = field(default_factory=list)

    @property
    def previous(self) -> str | None:
        return self.history[0] if self.history else None


@dataclass(frozen=True)
class Transfer:
    """A bundle on its way in: the offer it answers and the chunk indexes already on disk."""

    offer: OfferCommand
    have: list[int]

    @property
    def total(self) -> int:
        return -(-self.offer.size // self.offer.chunk_size)

    @property
    def complete(self) -> bool:
        return len(self.have) == self.total


class ModelStore:
    """Bundles by model name and version under ``root``. Construct (no I/O), then ``open()``."""

    def __init__(self, root: Path, *, keep_previous: int = 2) -> None:
        if keep_previous < 0:
            raise ValueError("keep_previous must be 0 or more")
        self.root = root
        self.keep_previous = keep_previous

    def open(self) -> None:
        (self.root / "incoming").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------ versions

    def folder(self, model: str, version: str) -> Path:
        return self.root / model / version

    def bundle_path(self, model: str, version: str) -> Path:
        return self.folder(model, version) / BUNDLE_FILE

    def has(self, model: str, version: str, sha256: str | None = None) -> bool:
        """Is this version stored (with this bundle hash, when one is given)?"""
        if not self.bundle_path(model, version).is_file():
            return False
        return sha256 is None or self.sha256(model, version) == sha256

    def sha256(self, model: str, version: str) -> str | None:
        try:
            return (self.folder(model, version) / "sha256").read_text().strip()
        except OSError:
            return None

    def versions(self, model: str) -> list[str]:
        """Stored versions of ``model``, oldest first."""
        base = self.root / model
        if not base.is_dir():
            return []
        found = [p.name for p in base.iterdir() if (p / BUNDLE_FILE).is_file()]
        return sorted(found, key=_version_order)

    def add(self, data: bytes) -> tuple[str, str]:
        """Store a bundle's bytes under the name and version its manifest gives; return them.

        Only the manifest is read here (hashes and signature are checked at activation, where
        the refusal is acked step by step). Raises ModelError if it is not a bundle at all.
        """
        manifest = _manifest_of(data)
        folder = self.folder(manifest.name, manifest.version)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / BUNDLE_FILE, data)
        _write_atomic(folder / "sha256", sha256_hex(data).encode())
        return manifest.name, manifest.version

    def import_file(self, path: Path) -> tuple[str, str]:
        """Store the bundle at ``path`` (the configured one) unless the same bytes are stored."""
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ModelError(f"cannot read the bundle {path}: {err}") from err
        return self.add(data)

    # ----------------------------------------------------------------------------- pointer

    def active(self) -> ActivePointer | None:
        path = self.root / "active.json"
        try:
            raw = json.loads(path.read_text())
            return ActivePointer(
                str(raw["model"]), str(raw["version"]), [str(v) for v in raw["history"]]
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.warning("Model store pointer %s is unreadable (%s); ignoring it", path, err)
            return None

    def set_active(self, model: str, version: str) -> ActivePointer:
        """Point ``active`` at ``version`` atomically; the version it replaces joins the history.

        Versions that fell out of the kept history are deleted from disk; bundles that never
        served stay.
        """
        current = self.active()
        history: list[str] = []
        if current is not None and current.model == model:
            history = [current.version, *current.history]
        history = [v for i, v in enumerate(history) if v != version and v not in history[:i]]
        history = history[: self.keep_previous]
        pointer = ActivePointer(model, version, history)
        _write_atomic(
            self.root / "active.json",
            json.dumps({"model": model, "version": version, "history": history}).encode(),
        )
        if current is not None and current.model == model:
            # Only versions that served and fell out of the history go; a bundle received but
            # not activated yet stays.
            dropped = {current.version, *current.history} - {version, *history}
            for old in sorted(dropped):
                shutil.rmtree(self.folder(model, old), ignore_errors=True)
                logger.info("Model store: removed %s@%s (beyond the kept versions)", model, old)
        return pointer

    def restore(self, model: str, version: str) -> ActivePointer:
        """Go back to ``version`` (a rollback): it leaves the history instead of joining it."""
        current = self.active()
        history = [] if current is None else [v for v in current.history if v != version]
        pointer = ActivePointer(model, version, history)
        _write_atomic(
            self.root / "active.json",
            json.dumps({"model": model, "version": version, "history": history}).encode(),
        )
        return pointer

    # ---------------------------------------------------------------------------- refusals

    def refused(self, sha256: str) -> str | None:
        """Why this bundle was refused or rolled back before, if it was."""
        return self._refusals().get(sha256)

    def mark_refused(self, sha256: str, reason: str) -> None:
        refusals = self._refusals()
        refusals[sha256] = reason
        _write_atomic(self.root / "refused.json", json.dumps(refusals).encode())

    def clear_refused(self, sha256: str) -> None:
        refusals = self._refusals()
        if refusals.pop(sha256, None) is not None:
            _write_atomic(self.root / "refused.json", json.dumps(refusals).encode())

    def _refusals(self) -> dict[str, str]:
        try:
            raw = json.loads((self.root / "refused.json").read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    # ---------------------------------------------------------------------------- transfers

    def _incoming(self, model: str, version: str) -> Path:
        return self.root / "incoming" / f"{model}@{version}"

    def begin_transfer(self, offer: OfferCommand) -> Transfer:
        """Record an offer; keep chunks already received for the same bundle (resume)."""
        folder = self._incoming(offer.model, offer.version)
        existing = self.transfer(offer.model, offer.version)
        if existing is not None and (
            existing.offer.sha256 != offer.sha256 or existing.offer.chunk_size != offer.chunk_size
        ):
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(folder / "offer.json", offer.to_json())
        found = self.transfer(offer.model, offer.version)
        assert found is not None
        return found

    def transfer(self, model: str, version: str) -> Transfer | None:
        folder = self._incoming(model, version)
        try:
            offer = OfferCommand.model_validate_json((folder / "offer.json").read_bytes())
        except (OSError, ValueError):
            return None
        have = sorted(int(p.stem) for p in folder.glob("*.chunk") if p.stem.isdigit())
        return Transfer(offer, have)

    def transfer_by_sha(self, model: str, version: str, sha256: str) -> Transfer | None:
        found = self.transfer(model, version)
        return found if found is not None and found.offer.sha256 == sha256 else None

    def add_chunk(self, model: str, version: str, index: int, data: bytes) -> Transfer:
        found = self.transfer(model, version)
        if found is None:
            raise ModelError(f"no offer of {model}@{version} precedes this chunk")
        if not 0 <= index < found.total:
            raise ModelError(f"chunk {index} of {model}@{version} is outside 0..{found.total - 1}")
        _write_atomic(self._incoming(model, version) / f"{index}.chunk", data)
        return Transfer(found.offer, sorted({*found.have, index}))

    def finish_transfer(self, model: str, version: str) -> str:
        """Join the chunks, check the whole bundle against the offer, store it; return its hash.

        On a hash or size mismatch the chunks are discarded (they cannot be told apart) and
        ModelError says so.
        """
        found = self.transfer(model, version)
        if found is None or not found.complete:
            raise ModelError(f"the transfer of {model}@{version} is not complete")
        folder = self._incoming(model, version)
        data = b"".join((folder / f"{i}.chunk").read_bytes() for i in range(found.total))
        digest = sha256_hex(data)
        if digest != found.offer.sha256 or len(data) != found.offer.size:
            shutil.rmtree(folder, ignore_errors=True)
            raise ModelError(
                f"the received bundle {model}@{version} has sha256 {digest} and {len(data)} "
                f"bytes; the offer said {found.offer.sha256} and {found.offer.size}"
            )
        name, stored_version = self.add(data)
        if (name, stored_version) != (model, version):
            shutil.rmtree(self.folder(name, stored_version), ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
            raise ModelError(
                f"the offer named {model}@{version} but the bundle is {name}@{stored_version}"
            )
        shutil.rmtree(folder, ignore_errors=True)
        return digest


def _version_order(version: str) -> tuple[int, int, int, int, str]:
    try:
        return version_key(version)
    except ValueError:
        return (-1, 0, 0, 0, version)


def _manifest_of(data: bytes) -> ModelManifest:
    """The manifest alone; hashes and signature are the activation's ``verified`` step."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            raw = archive.read(MANIFEST_FILE)
        return ModelManifest.model_validate_json(raw)
    except (OSError, KeyError, zipfile.BadZipFile, ValueError) as err:
        raise ModelError(f"not a bundle with a readable {MANIFEST_FILE}: {err}") from err
