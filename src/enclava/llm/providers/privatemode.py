"""privatemode.ai through its ``privatemode-proxy`` sidecar.

The proxy attests the remote deployment, encrypts every prompt end to end and speaks the OpenAI
API, so calls go through ``HttpProvider``. It has no HTTP endpoint for attestation status; what
it leaves is its manifest history in ``<workspace>/manifests``: ``<N>.json`` per newly verified
deployment manifest and ``log.txt`` with one ``<RFC3339 time> <path>`` line per version. When
that folder is mounted read-only and configured as ``manifest_dir``, the current manifest
(version, time, SHA-256) is shown in the status, and a pinned ``expected_manifest_sha256`` that
does not match refuses all traffic to the provider.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from enclava.llm.config import ProviderConfig
from enclava.llm.providers.http import HttpProvider
from enclava.llm.resilience import ProviderError

_RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    version: int
    verified_at: str | None
    sha256: str
    file: str


def _manifests_folder(configured: Path) -> Path:
    """Accept the proxy's workspace or its ``manifests`` folder."""
    if (configured / "log.txt").exists() or not (configured / "manifests").is_dir():
        return configured
    return configured / "manifests"


def read_current_manifest(configured: Path) -> ManifestInfo | None:
    """The newest manifest named in ``log.txt`` (or the highest ``<N>.json`` without a log)."""
    folder = _manifests_folder(configured)
    entries: list[tuple[int, str | None, str]] = []
    log = folder / "log.txt"
    if log.exists():
        lines = [line.split() for line in log.read_text(encoding="utf-8").splitlines()]
        for number, parts in enumerate((p for p in lines if len(p) >= 2), start=1):
            entries.append((number, parts[0], Path(parts[1]).name))
    else:
        numbered = sorted(int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit())
        entries = [(n, None, f"{n}.json") for n in numbered]
    # The proxy appends to the log before writing the file; skip a version still being written.
    for version, logged_at, name in reversed(entries):
        path = folder / name
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            verified_at = logged_at
            if verified_at is None:
                verified_at = datetime.fromtimestamp(path.stat().st_mtime).astimezone().isoformat()
            return ManifestInfo(version, verified_at, digest, name)
    return None


class PrivatemodeProvider(HttpProvider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.manifest_dir = config.manifest_dir
        self.expected_sha256 = (config.expected_manifest_sha256 or "").lower() or None
        self._manifest: ManifestInfo | None = None
        self._manifest_error: str | None = None
        self._checked_at = 0.0
        self._log_stamp: tuple[float, int] | None = None

    def _refresh_manifest(self, force: bool = False) -> None:
        if self.manifest_dir is None:
            return
        now = time.monotonic()
        if not force and now - self._checked_at < _RECHECK_S:
            return
        self._checked_at = now
        folder = _manifests_folder(self.manifest_dir)
        try:
            stat = os.stat(folder / "log.txt") if (folder / "log.txt").exists() else os.stat(folder)
            stamp = (stat.st_mtime, stat.st_size)
            if not force and stamp == self._log_stamp and self._manifest is not None:
                return
            self._manifest = read_current_manifest(self.manifest_dir)
            self._log_stamp = stamp
            self._manifest_error = None if self._manifest else "no manifest found"
        except OSError as exc:
            self._manifest = None
            self._manifest_error = f"cannot read manifest folder: {exc.strerror}"

    def check_ready(self) -> None:
        if self.expected_sha256 is None:
            return
        self._refresh_manifest()
        if self._manifest is None:
            raise ProviderError(
                "privatemode manifest is pinned but no manifest could be read; "
                "confidential traffic refused",
                code="manifest_unavailable",
                status=503,
            )
        if self._manifest.sha256 != self.expected_sha256:
            raise ProviderError(
                "privatemode deployment manifest does not match the pinned SHA-256; "
                "confidential traffic refused",
                code="manifest_mismatch",
                status=503,
            )

    def status_details(self) -> dict[str, Any]:
        if self.manifest_dir is None:
            return {"manifest": None, "attestation": "performed by privatemode-proxy"}
        self._refresh_manifest(force=True)
        manifest = self._manifest
        return {
            "attestation": "performed by privatemode-proxy",
            "manifest": None
            if manifest is None
            else {
                "version": manifest.version,
                "verified_at": manifest.verified_at,
                "sha256": manifest.sha256,
                "file": manifest.file,
            },
            "manifest_error": self._manifest_error,
            "expected_manifest_sha256": self.expected_sha256,
            "manifest_matches": None
            if self.expected_sha256 is None or manifest is None
            else manifest.sha256 == self.expected_sha256,
        }
