"""``enclava rag ingest``: upload files and folders to a collection through a running server.

Qdrant's local store belongs to the server process, so the command never opens it: it talks to
the server's HTTP API like any client, signed in as ``--user`` with a password (internal API) or
with an API key holding ``rag.write`` (public API).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from enclava.rag.parsing import SUPPORTED_EXTENSIONS

INTERNAL_BASE = "/api-internal/v1/rag"
PUBLIC_BASE = "/api/v1/rag"
_POLL_S = 0.5


class IngestError(Exception):
    """A problem that stops the whole run (authentication, the collection)."""


@dataclass
class FileResult:
    label: str
    outcome: str  # processed, failed, duplicate, rejected, queued
    chunks: int | None = None
    detail: str = ""
    document_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome in ("processed", "duplicate", "queued")


def collect_files(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Named files as given; folders walked recursively for supported types (no hidden files).

    Each file comes with the label it is reported under: its path from the folder named.
    """
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(path.rglob("*")):
                relative = candidate.relative_to(path)
                if any(part.startswith(".") for part in relative.parts):
                    continue
                if candidate.is_file() and candidate.suffix.lower() in SUPPORTED_EXTENSIONS:
                    found.append((candidate, str(Path(path.name) / relative)))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise IngestError(f"{path} does not exist")
    unique: dict[Path, tuple[Path, str]] = {}
    for item in found:
        unique.setdefault(item[0].resolve(), item)
    return list(unique.values())


def _error(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message") or response.status_code)
        if body.get("detail"):
            return str(body["detail"])
    return f"HTTP {response.status_code}"


class IngestClient:
    def __init__(
        self,
        server: str,
        *,
        user: str,
        api_key: str | None = None,
        password: str | None = None,
        timeout_s: float = 300.0,
    ) -> None:
        self.user = user.strip().lower()
        self.http = httpx.Client(base_url=server.rstrip("/"), timeout=timeout_s)
        if api_key:
            self.base = PUBLIC_BASE
            self.headers = {"Authorization": f"Bearer {api_key}"}
        elif password is not None:
            self.base = INTERNAL_BASE
            self.headers = {"Authorization": f"Bearer {self._login(password)}"}
        else:
            raise IngestError("give an API key (--api-key / ENCLAVA_API_KEY) or a password")

    def close(self) -> None:
        self.http.close()

    def _login(self, password: str) -> str:
        try:
            response = self.http.post(
                "/api-internal/v1/auth/login", json={"email": self.user, "password": password}
            )
        except httpx.HTTPError as exc:
            raise IngestError(f"cannot reach the server: {exc}") from exc
        if response.status_code != 200:
            raise IngestError(f"sign-in failed: {_error(response)}")
        token: str = response.json()["access_token"]
        return token

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, self.base + path, headers=self.headers, **kwargs)
        except httpx.HTTPError as exc:
            raise IngestError(f"cannot reach the server: {exc}") from exc

    def resolve_collection(self, name: str) -> dict[str, Any]:
        """The collection ``name`` of ``--user`` (created when missing)."""
        response = self._request("GET", "/collections", params={"limit": 500})
        if response.status_code != 200:
            raise IngestError(f"cannot list collections: {_error(response)}")
        collections: list[dict[str, Any]] = response.json()
        own_emails = {c["owner_email"] for c in collections if c["access"] == "owner"}
        if own_emails and self.user not in own_emails:
            raise IngestError(f"the credentials belong to {own_emails.pop()}, not {self.user}")
        for collection in collections:
            if collection["name"] == name and collection["owner_email"] == self.user:
                if collection["access"] == "read":
                    raise IngestError(f"collection {name!r} is read-only for you")
                return collection
        created = self._request("POST", "/collections", json={"name": name})
        if created.status_code != 201:
            raise IngestError(f"cannot create collection {name!r}: {_error(created)}")
        collection = created.json()
        if collection["owner_email"] != self.user:
            # The API key belongs to someone else: undo, and say so.
            self._request("DELETE", f"/collections/{collection['id']}")
            raise IngestError(
                f"the credentials belong to {collection['owner_email']}, not {self.user}"
            )
        return dict(collection)

    def upload(
        self, collection_id: str, path: Path, label: str, progress: Progress, task: TaskID
    ) -> FileResult:
        class _Counting:
            """Advances the progress bar as httpx streams the file."""

            def __init__(self, handle: Any) -> None:
                self.handle = handle

            def read(self, size: int = -1) -> bytes:
                data: bytes = self.handle.read(size)
                progress.advance(task, len(data))
                return data

        with path.open("rb") as handle:
            response = self._request(
                "POST",
                f"/collections/{collection_id}/documents",
                files={"file": (path.name, _Counting(handle))},
            )
        if response.status_code not in (200, 202):
            return FileResult(label, "rejected", detail=_error(response))
        document = response.json()
        if document.get("duplicate"):
            detail = f"same content as {document['filename']} ({document['status']})"
            outcome = "duplicate" if document["status"] != "failed" else "failed"
            return FileResult(
                label, outcome, document.get("chunk_count"), detail, document_id=document["id"]
            )
        return FileResult(label, "queued", document_id=document["id"])

    def wait(self, result: FileResult, deadline: float) -> None:
        while result.outcome == "queued" and result.document_id:
            response = self._request("GET", f"/documents/{result.document_id}")
            if response.status_code != 200:
                result.outcome, result.detail = "failed", _error(response)
                return
            document = response.json()
            if document["status"] in ("processed", "failed"):
                result.outcome = document["status"]
                result.chunks = document.get("chunk_count")
                result.detail = document.get("error") or ""
                return
            if time.monotonic() > deadline:
                result.detail = f"still {document['status']} when the wait ended"
                return
            time.sleep(_POLL_S)


def ingest(
    client: IngestClient,
    collection_name: str,
    paths: list[Path],
    *,
    wait: bool = True,
    wait_timeout_s: float = 3600.0,
    console: Console | None = None,
) -> list[FileResult]:
    console = console or Console(stderr=True)
    files = collect_files(paths)
    if not files:
        raise IngestError("no supported files found")
    collection = client.resolve_collection(collection_name)
    total = sum(path.stat().st_size for path, _ in files)
    results: list[FileResult] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("uploading", total=total)
        for path, label in files:
            progress.update(task, description=f"uploading {label[-40:]}")
            results.append(client.upload(collection["id"], path, label, progress, task))
        progress.update(task, description="uploaded")
    if wait:
        pending = [r for r in results if r.outcome == "queued"]
        deadline = time.monotonic() + wait_timeout_s
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            console=console,
        ) as progress:
            task = progress.add_task("processing", total=len(pending))
            for result in pending:
                client.wait(result, deadline)
                progress.advance(task)
    return results


def results_table(collection: str, results: list[FileResult]) -> Table:
    table = Table(title=f"collection {collection}")
    table.add_column("file")
    table.add_column("result")
    table.add_column("chunks", justify="right")
    table.add_column("detail")
    for result in results:
        table.add_row(
            result.label,
            result.outcome,
            "" if result.chunks is None else str(result.chunks),
            result.detail,
        )
    return table
