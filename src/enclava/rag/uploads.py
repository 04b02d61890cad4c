"""Receive a multipart upload straight to disk, hashing and counting bytes as they arrive.

Starlette's form parser would spool the file first and only then let us look at its size; here
the body is parsed as it streams in, the ``file`` part goes to a temporary file under the data
dir in 1 MiB writes (on a thread), and the upload stops with 413 as soon as it passes the limit,
or before reading anything when ``Content-Length`` already says it is too large. At no point is
more than about one write buffer of the file in memory.

The client's filename is cleaned for display only; files are stored under generated names.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from enclava.errors import BadRequestError, PayloadTooLargeError

FILE_FIELD = "file"
# Room for multipart boundaries, part headers and the small form fields beside the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 16 * 1024
MAX_HEADER_BYTES = 8 * 1024
MAX_PARTS = 16
MAX_FILENAME_CHARS = 200
_WRITE_BUFFER = 1024 * 1024
_HEAD_BYTES = 4096


@dataclass
class ReceivedUpload:
    path: Path
    filename: str
    declared_type: str | None
    size: int
    sha256: str
    head: bytes
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def clean_filename(raw: str | None) -> str:
    """A display name: no directories, control characters or odd Unicode forms; bounded length."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[/\\]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = re.sub(r"\s+", " ", name).strip(" .")
    if not name:
        return "document"
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, suffix = name.rpartition(".")
        if dot and 0 < len(suffix) <= 10:
            name = stem[: MAX_FILENAME_CHARS - len(suffix) - 1].rstrip() + "." + suffix
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip()
    return name


class _PartState:
    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, str] = {}
        self.name: str | None = None
        self.filename: str | None = None
        self.content_type: str | None = None
        self.is_file = False
        self.data = bytearray()


class _UploadReceiver:
    def __init__(self, incoming_dir: Path, max_bytes: int) -> None:
        self.incoming_dir = incoming_dir
        self.max_bytes = max_bytes
        self.part: _PartState | None = None
        self.fields: dict[str, str] = {}
        self.file_seen = False
        self.path: Path | None = None
        self.handle: IO[bytes] | None = None
        self.buffer = bytearray()
        self.head = bytearray()
        self.hasher = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.declared_type: str | None = None
        self.error: Exception | None = None
        self.parts = 0
        self.ended = False

    # Parser callbacks (synchronous; they only touch memory).

    def on_part_begin(self) -> None:
        self.part = _PartState()
        self.parts += 1
        if self.parts > MAX_PARTS:
            self.error = self.error or BadRequestError(
                f"The form has more than {MAX_PARTS} parts", code="malformed_multipart"
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        assert self.part is not None
        self.part.header_field += data[start:end]
        self._check_header(self.part.header_field)

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        assert self.part is not None
        self.part.header_value += data[start:end]
        self._check_header(self.part.header_value)

    def _check_header(self, value: bytearray) -> None:
        if len(value) > MAX_HEADER_BYTES:
            value.clear()
            self.error = self.error or BadRequestError(
                "A multipart header is too long", code="malformed_multipart"
            )

    def on_end(self) -> None:
        self.ended = True

    def on_header_end(self) -> None:
        part = self.part
        assert part is not None
        name = bytes(part.header_field).decode("latin-1").strip().lower()
        part.headers[name] = bytes(part.header_value).decode("latin-1")
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished(self) -> None:
        part = self.part
        assert part is not None
        _, options = parse_options_header(part.headers.get("content-disposition", ""))
        part.name = _decode_option(options.get(b"name"))
        filename = options.get(b"filename")
        part.content_type = part.headers.get("content-type")
        if part.name == FILE_FIELD:
            if self.file_seen:
                self.error = BadRequestError("Upload one file per request", code="too_many_files")
                return
            self.file_seen = True
            part.is_file = True
            self.filename = _decode_option(filename)
            self.declared_type = part.content_type

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self.part
        assert part is not None
        chunk = data[start:end]
        if part.is_file:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                self.error = self.error or _too_large(self.max_bytes)
                return
            if len(self.head) < _HEAD_BYTES:
                self.head += chunk[: _HEAD_BYTES - len(self.head)]
            self.buffer += chunk
        else:
            part.data += chunk
            if len(part.data) > MAX_FIELD_BYTES:
                self.error = self.error or PayloadTooLargeError(
                    f"Form field {part.name!r} is larger than {MAX_FIELD_BYTES} bytes"
                )

    def on_part_end(self) -> None:
        part = self.part
        if part is not None and not part.is_file and part.name:
            self.fields[part.name] = bytes(part.data).decode("utf-8", errors="replace")
        self.part = None

    # Disk writes, on a thread.

    def _write_sync(self, data: bytes) -> None:
        if self.handle is None:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
            self.path = self.incoming_dir / f"{uuid.uuid4().hex}.part"
            self.handle = self.path.open("xb")
        self.handle.write(data)
        self.hasher.update(data)

    async def drain(self, force: bool = False) -> None:
        if self.buffer and (force or len(self.buffer) >= _WRITE_BUFFER):
            data = bytes(self.buffer)
            self.buffer.clear()
            await asyncio.to_thread(self._write_sync, data)

    def close_file(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def cleanup(self) -> None:
        self.close_file()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _decode_option(value: bytes | None) -> str | None:
    if value is None:
        return None
    # Browsers send UTF-8 bytes; the parser hands them back as latin-1.
    return value.decode("utf-8", errors="replace")


def _too_large(max_bytes: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The file is larger than the upload limit of {max_bytes} bytes", code="file_too_large"
    )


async def receive_upload(request: Request, incoming_dir: Path, max_bytes: int) -> ReceivedUpload:
    """Stream the request's multipart body; the ``file`` part lands in ``incoming_dir``."""
    media_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        raise BadRequestError(
            "Send the document as multipart/form-data with a 'file' field",
            code="multipart_required",
        )
    declared_length = request.headers.get("content-length")
    if (
        declared_length
        and declared_length.isdigit()
        and int(declared_length) > max_bytes + MULTIPART_OVERHEAD_BYTES
    ):
        raise _too_large(max_bytes)

    receiver = _UploadReceiver(incoming_dir, max_bytes)
    callbacks: Any = {
        "on_part_begin": receiver.on_part_begin,
        "on_part_data": receiver.on_part_data,
        "on_part_end": receiver.on_part_end,
        "on_header_field": receiver.on_header_field,
        "on_header_value": receiver.on_header_value,
        "on_header_end": receiver.on_header_end,
        "on_headers_finished": receiver.on_headers_finished,
        "on_end": receiver.on_end,
    }
    parser = MultipartParser(boundary, callbacks)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes + MULTIPART_OVERHEAD_BYTES:
                raise _too_large(max_bytes)
            try:
                parser.write(chunk)
            except Exception as exc:  # the parser's own errors: a malformed body
                raise BadRequestError(
                    "The multipart body is malformed", code="malformed_multipart"
                ) from exc
            if receiver.error is not None:
                raise receiver.error
            await receiver.drain()
        parser.finalize()
        if receiver.error is not None:
            raise receiver.error
        if not receiver.file_seen:
            raise BadRequestError("The form has no 'file' field", code="missing_file")
        if not receiver.ended:
            raise BadRequestError(
                "The upload ended before the multipart body was complete", code="incomplete_upload"
            )
        await receiver.drain(force=True)
        if receiver.path is None:  # an empty file still gets a (empty) file on disk
            await asyncio.to_thread(receiver._write_sync, b"")
        receiver.close_file()
    except BaseException:
        await asyncio.to_thread(receiver.cleanup)
        raise
    assert receiver.path is not None
    return ReceivedUpload(
        path=receiver.path,
        filename=clean_filename(receiver.filename),
        declared_type=receiver.declared_type,
        size=receiver.size,
        sha256=receiver.hasher.hexdigest(),
        head=bytes(receiver.head),
        fields=receiver.fields,
    )
