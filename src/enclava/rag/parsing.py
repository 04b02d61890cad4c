"""Turn an uploaded file into a flat list of text blocks that keep the document's structure.

Each parser yields ``Block``s in reading order: headings (with their level), paragraphs, table
rows, records; with the page (PDF) or slide (PPTX) they came from. The chunker builds chunks from
them. Parsers run in a worker thread; they raise ``DocumentError`` with a reason a user can act
on ("the PDF is password-protected"), never a library's traceback.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any


class DocumentError(Exception):
    """The file cannot be turned into text; the message is shown to the user as is."""


class DocumentFormat(StrEnum):
    PDF = "pdf"
    DOCX = "docx"
    XLSX = "xlsx"
    PPTX = "pptx"
    HTML = "html"
    MARKDOWN = "markdown"
    TEXT = "text"
    CSV = "csv"
    JSON = "json"
    JSONL = "jsonl"

    @property
    def media_type(self) -> str:
        return _MEDIA_TYPES[self]


_MEDIA_TYPES = {
    DocumentFormat.PDF: "application/pdf",
    DocumentFormat.DOCX: "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    DocumentFormat.XLSX: "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    DocumentFormat.PPTX: "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    DocumentFormat.HTML: "text/html",
    DocumentFormat.MARKDOWN: "text/markdown",
    DocumentFormat.TEXT: "text/plain",
    DocumentFormat.CSV: "text/csv",
    DocumentFormat.JSON: "application/json",
    DocumentFormat.JSONL: "application/jsonl",
}
_EXTENSIONS = {
    ".pdf": DocumentFormat.PDF,
    ".docx": DocumentFormat.DOCX,
    ".xlsx": DocumentFormat.XLSX,
    ".xlsm": DocumentFormat.XLSX,
    ".pptx": DocumentFormat.PPTX,
    ".html": DocumentFormat.HTML,
    ".htm": DocumentFormat.HTML,
    ".xhtml": DocumentFormat.HTML,
    ".md": DocumentFormat.MARKDOWN,
    ".markdown": DocumentFormat.MARKDOWN,
    ".txt": DocumentFormat.TEXT,
    ".text": DocumentFormat.TEXT,
    ".log": DocumentFormat.TEXT,
    ".rst": DocumentFormat.TEXT,
    ".csv": DocumentFormat.CSV,
    ".json": DocumentFormat.JSON,
    ".jsonl": DocumentFormat.JSONL,
    ".ndjson": DocumentFormat.JSONL,
}
_BY_MEDIA_TYPE = {
    **{media: fmt for fmt, media in _MEDIA_TYPES.items()},
    "application/x-ndjson": DocumentFormat.JSONL,
    "application/xhtml+xml": DocumentFormat.HTML,
    "text/x-markdown": DocumentFormat.MARKDOWN,
}
LEGACY_OFFICE_EXTENSIONS = frozenset({".doc", ".xls", ".ppt"})
SUPPORTED_EXTENSIONS = frozenset(_EXTENSIONS)

_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGIC = b"PK\x03\x04"
# A zip-based Office file that inflates beyond this is refused (a "zip bomb" guard).
MAX_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
# Paragraphs of plain text are cut at this length while streaming; the chunker splits further.
_MAX_PARAGRAPH_CHARS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Block:
    text: str
    page: int | None = None
    # > 0 for a heading (1 = top level); the chunker tracks the heading path from these.
    heading_level: int = 0


@dataclass(slots=True)
class ParsedDocument:
    blocks: list[Block]
    page_count: int | None = None


def detect_format(filename: str, declared_type: str | None, head: bytes) -> DocumentFormat | None:
    """Pick the parser from the file's extension, then its declared type, then its first bytes."""
    suffix = Path(filename).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    media = (declared_type or "").split(";")[0].strip().lower()
    if media in _BY_MEDIA_TYPE:
        return _BY_MEDIA_TYPE[media]
    if head.startswith(b"%PDF-"):
        return DocumentFormat.PDF
    stripped = head.lstrip()[:64].lower()
    if stripped.startswith((b"<!doctype html", b"<html")):
        return DocumentFormat.HTML
    if _looks_like_text(head):
        return DocumentFormat.TEXT
    return None


def sniff_office_format(path: Path) -> DocumentFormat | None:
    """Tell DOCX, XLSX and PPTX apart by the parts inside the zip (no extension to go by)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return None
    if "word/document.xml" in names:
        return DocumentFormat.DOCX
    if "xl/workbook.xml" in names:
        return DocumentFormat.XLSX
    if "ppt/presentation.xml" in names:
        return DocumentFormat.PPTX
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return True
    if head.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return True
    if b"\x00" in head:
        return False
    try:
        # The sample may end inside a multi-byte character.
        head.decode("utf-8")
        return True
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3


def parse_file(path: Path, fmt: DocumentFormat) -> ParsedDocument:
    """Parse ``path`` as ``fmt`` (blocking: call from a thread)."""
    parser = _PARSERS[fmt]
    try:
        document = parser(path)
    except DocumentError:
        raise
    except RecursionError:
        raise DocumentError("The file is nested too deeply to be read")
    except MemoryError:
        raise DocumentError("The file is too large to be read")
    document.blocks = [b for b in document.blocks if b.text.strip()]
    return document


# --- PDF ---------------------------------------------------------------------------------


def _parse_pdf(path: Path) -> ParsedDocument:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PyPdfError

    with path.open("rb") as handle:
        if not handle.read(1024).lstrip().startswith(b"%PDF-"):
            raise DocumentError("The file is not a PDF (it does not start with a PDF header)")
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            # Some PDFs are encrypted with an empty user password only to restrict printing or
            # copying; those open without a password. Anything else needs one we do not have.
            try:
                opened = reader.decrypt("")
            except (PyPdfError, NotImplementedError, ValueError) as exc:
                raise DocumentError("The PDF is encrypted and cannot be opened") from exc
            if not opened:
                raise DocumentError("The PDF is password-protected; upload an unprotected copy")
        page_count = len(reader.pages)
    except DocumentError:
        raise
    except FileNotDecryptedError as exc:
        raise DocumentError("The PDF is password-protected; upload an unprotected copy") from exc
    except Exception as exc:
        raise DocumentError("The PDF is damaged or not a valid PDF file") from exc

    blocks: list[Block] = []
    unreadable = 0
    for number in range(page_count):
        try:
            text = reader.pages[number].extract_text() or ""
        except Exception:
            unreadable += 1
            continue
        for paragraph in _paragraphs(text):
            blocks.append(Block(_join_lines(paragraph), page=number + 1))
    if page_count and unreadable == page_count:
        raise DocumentError("The PDF is damaged: no page could be read")
    return ParsedDocument(blocks, page_count=page_count)


def _paragraphs(text: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", text) if p.strip()]


def _join_lines(paragraph: str) -> str:
    # PDF text comes one visual line at a time; rejoin hyphenated and wrapped lines.
    joined = re.sub(r"(\w)-\n(\w)", r"\1\2", paragraph.strip())
    return re.sub(r"\s*\n\s*", " ", joined)


# --- Office (zip-based) -------------------------------------------------------------------


def _check_office_container(path: Path, kind: str) -> None:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(_OLE_MAGIC):
        raise DocumentError(
            f"The {kind} file is password-protected or in the legacy binary format; "
            "save it unprotected as a current Office file"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise DocumentError(f"The file is not a valid {kind} file")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DocumentError(f"The {kind} file is damaged (not a readable zip package)") from exc
    if sum(info.file_size for info in infos) > MAX_UNCOMPRESSED_BYTES:
        raise DocumentError(f"The {kind} file expands to more than 512 MB and was refused")


def _parse_docx(path: Path) -> ParsedDocument:
    import docx
    from docx.table import Table

    _check_office_container(path, "DOCX")
    try:
        document = docx.Document(str(path))
    except Exception as exc:
        raise DocumentError("The DOCX file is damaged or not a Word document") from exc

    blocks: list[Block] = []
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            blocks.extend(Block(row) for row in _docx_table_rows(item))
            continue
        text = item.text.strip()
        if not text:
            continue
        blocks.append(Block(text, heading_level=_docx_heading_level(item)))
    return ParsedDocument(blocks)


def _docx_heading_level(paragraph: Any) -> int:
    try:
        name = (paragraph.style.name or "") if paragraph.style is not None else ""
    except (KeyError, ValueError):
        return 0
    # The title sits above "Heading 1", so headings are shifted down one level.
    if name == "Title":
        return 1
    match = re.fullmatch(r"Heading (\d)", name)
    return int(match.group(1)) + 1 if match else 0


def _docx_table_rows(table: Any) -> Iterator[str]:
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = cell.text.strip()
            # Merged cells repeat their text once per grid column.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            yield " | ".join(cells)


def _parse_xlsx(path: Path) -> ParsedDocument:
    import openpyxl

    _check_office_container(path, "XLSX")
    # A file object, not the path: openpyxl refuses paths without an Excel extension, and
    # stored files have generated names.
    handle = path.open("rb")
    try:
        workbook = openpyxl.load_workbook(handle, read_only=True, data_only=True)
    except Exception as exc:
        handle.close()
        raise DocumentError("The XLSX file is damaged or not an Excel workbook") from exc
    blocks: list[Block] = []
    try:
        for sheet in workbook.worksheets:
            blocks.append(Block(f"Sheet: {sheet.title}", heading_level=1))
            header: list[str] | None = None
            for row in sheet.iter_rows(values_only=True):
                values = ["" if v is None else str(v).strip() for v in row]
                if not any(values):
                    continue
                if header is None:
                    header = values
                    blocks.append(Block(" | ".join(v for v in values if v)))
                    continue
                blocks.append(Block(_record_line(header, values)))
    except Exception as exc:
        raise DocumentError("The XLSX file is damaged and could not be read") from exc
    finally:
        workbook.close()
        handle.close()
    return ParsedDocument(blocks)


def _record_line(header: list[str], values: list[str]) -> str:
    parts = []
    for position, value in enumerate(values):
        if not value:
            continue
        name = header[position] if position < len(header) and header[position] else ""
        parts.append(f"{name}: {value}" if name else value)
    return "; ".join(parts)


def _parse_pptx(path: Path) -> ParsedDocument:
    from pptx import Presentation

    _check_office_container(path, "PPTX")
    try:
        presentation = Presentation(str(path))
    except Exception as exc:
        raise DocumentError("The PPTX file is damaged or not a PowerPoint presentation") from exc
    blocks: list[Block] = []
    slide_count = 0
    for number, slide in enumerate(presentation.slides, start=1):
        slide_count = number
        title_shape = slide.shapes.title
        if title_shape is not None and title_shape.text_frame.text.strip():
            blocks.append(Block(title_shape.text_frame.text.strip(), number, heading_level=1))
        for shape in slide.shapes:
            if title_shape is not None and shape.shape_id == title_shape.shape_id:
                continue
            blocks.extend(Block(text, number) for text in _pptx_shape_texts(shape))
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None and notes.text.strip():
                blocks.append(Block(f"Notes: {notes.text.strip()}", number))
    return ParsedDocument(blocks, page_count=slide_count)


def _pptx_shape_texts(shape: Any) -> Iterator[str]:
    if getattr(shape, "shape_type", None) is not None and hasattr(shape, "shapes"):
        for inner in shape.shapes:  # a group
            yield from _pptx_shape_texts(inner)
        return
    if getattr(shape, "has_table", False):
        for row in shape.table.rows:
            cells = [cell.text.strip() for cell in row.cells if cell.text.strip()]
            if cells:
                yield " | ".join(cells)
        return
    if getattr(shape, "has_text_frame", False):
        for paragraph in shape.text_frame.paragraphs:
            text = "".join(run.text for run in paragraph.runs).strip()
            if text:
                yield text


# --- HTML and Markdown -------------------------------------------------------------------

_SKIPPED_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas"}
)
_HEADING_TAGS = {f"h{n}": n for n in range(1, 7)}
_BLOCK_TAGS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "dd", "details", "div",
        "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hr", "li",
        "main", "nav", "ol", "p", "section", "summary", "table", "tbody", "tfoot", "thead", "ul",
    }
)  # fmt: skip


class _HtmlBlocks:
    """Walks the parsed tree, emitting one block per heading, paragraph-like element or row."""

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self._inline: list[str] = []

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._inline)).strip()
        self._inline = []
        if text:
            self.blocks.append(Block(text))

    def walk(self, node: Any) -> None:
        from bs4 import Comment, Declaration, Doctype, NavigableString, ProcessingInstruction, Tag

        for child in node.children:
            if isinstance(child, Comment | Declaration | Doctype | ProcessingInstruction):
                continue
            if isinstance(child, NavigableString):
                self._inline.append(str(child))
                continue
            if not isinstance(child, Tag):
                continue
            name = child.name.lower()
            if name in _SKIPPED_TAGS:
                continue
            if name in _HEADING_TAGS:
                self.flush()
                text = child.get_text(" ", strip=True)
                if text:
                    self.blocks.append(Block(text, heading_level=_HEADING_TAGS[name]))
            elif name == "tr":
                self.flush()
                cells = [c.get_text(" ", strip=True) for c in child.find_all(["td", "th"])]
                row = " | ".join(c for c in cells if c)
                if row:
                    self.blocks.append(Block(row))
            elif name == "pre":
                self.flush()
                text = child.get_text().strip("\n")
                if text.strip():
                    self.blocks.append(Block(text))
            elif name == "br":
                self._inline.append(" ")
            elif name in _BLOCK_TAGS:
                self.flush()
                self.walk(child)
                self.flush()
            else:
                self.walk(child)


def _html_blocks(markup: str | bytes) -> list[Block]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    walker = _HtmlBlocks()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if title:
        walker.blocks.append(Block(title, heading_level=1))
    walker.walk(soup)
    walker.flush()
    return walker.blocks


def _parse_html(path: Path) -> ParsedDocument:
    raw = path.read_bytes()
    if b"\x00" in raw[:4096] and not raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise DocumentError("The file is binary, not HTML")
    return ParsedDocument(_html_blocks(raw))


def _parse_markdown(path: Path) -> ParsedDocument:
    import markdown

    text = _read_text(path)
    html = markdown.markdown(text, extensions=["tables", "fenced_code"])
    return ParsedDocument(_html_blocks(html))


# --- Plain text, CSV, JSON ---------------------------------------------------------------


def _sniff_encoding(path: Path) -> str:
    with path.open("rb") as handle:
        head = handle.read(64 * 1024)
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    if b"\x00" in head:
        raise DocumentError("The file is binary, not text")
    try:
        head.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError as exc:
        if exc.start >= len(head) - 3:
            return "utf-8"
        return "cp1252"


def _read_text(path: Path) -> str:
    encoding = _sniff_encoding(path)
    return path.read_text(encoding=encoding, errors="replace")


def _parse_text(path: Path) -> ParsedDocument:
    """Streams the file: a large text file is never held in memory as a whole."""
    encoding = _sniff_encoding(path)
    blocks: list[Block] = []
    paragraph: list[str] = []
    size = 0

    def flush() -> None:
        nonlocal size
        text = "".join(paragraph).strip()
        paragraph.clear()
        size = 0
        if text:
            blocks.append(Block(text))

    with path.open("r", encoding=encoding, errors="replace", newline=None) as handle:
        while True:
            line = handle.readline(_MAX_PARAGRAPH_CHARS)
            if not line:
                break
            if not line.strip():
                flush()
                continue
            paragraph.append(line)
            size += len(line)
            if size >= _MAX_PARAGRAPH_CHARS:
                flush()
    flush()
    return ParsedDocument(blocks)


def _parse_csv(path: Path) -> ParsedDocument:
    text = _read_text(path)
    sample = text[: 64 * 1024]
    try:
        dialect: Any = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    blocks: list[Block] = []
    header: list[str] | None = None
    try:
        for row in csv.reader(io.StringIO(text), dialect):
            values = [value.strip() for value in row]
            if not any(values):
                continue
            if header is None:
                header = values
                blocks.append(Block(" | ".join(v for v in values if v)))
                continue
            blocks.append(Block(_record_line(header, values)))
    except csv.Error as exc:
        raise DocumentError(f"The CSV file could not be read: {exc}") from exc
    return ParsedDocument(blocks)


def _parse_json(path: Path) -> ParsedDocument:
    try:
        value = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DocumentError(
            f"The file is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from exc
    blocks: list[Block] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, list) and item and all(isinstance(x, dict) for x in item):
                blocks.append(Block(str(key), heading_level=1))
                blocks.extend(Block(_flatten(record)) for record in item)
            else:
                blocks.append(Block(_flatten({key: item})))
    elif isinstance(value, list):
        blocks.extend(Block(_flatten(item)) for item in value)
    else:
        blocks.append(Block(_flatten(value)))
    return ParsedDocument(blocks)


def _parse_jsonl(path: Path) -> ParsedDocument:
    encoding = _sniff_encoding(path)
    blocks: list[Block] = []
    with path.open("r", encoding=encoding, errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DocumentError(f"Line {number} of the JSONL file is not valid JSON") from exc
            blocks.append(Block(_flatten(value)))
    return ParsedDocument(blocks)


def _flatten(value: Any, prefix: str = "") -> str:
    """A JSON value as ``path: value`` lines, readable for people and for the embedder."""
    lines: list[str] = []

    def visit(item: Any, path: str) -> None:
        if isinstance(item, dict):
            for key, inner in item.items():
                visit(inner, f"{path}.{key}" if path else str(key))
        elif isinstance(item, list) and any(isinstance(x, dict | list) for x in item):
            for position, inner in enumerate(item):
                visit(inner, f"{path}[{position}]")
        elif isinstance(item, list):
            joined = ", ".join(_scalar(x) for x in item)
            lines.append(f"{path}: {joined}" if path else joined)
        else:
            lines.append(f"{path}: {_scalar(item)}" if path else _scalar(item))

    visit(value, prefix)
    return "\n".join(line for line in lines if line)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


_PARSERS = {
    DocumentFormat.PDF: _parse_pdf,
    DocumentFormat.DOCX: _parse_docx,
    DocumentFormat.XLSX: _parse_xlsx,
    DocumentFormat.PPTX: _parse_pptx,
    DocumentFormat.HTML: _parse_html,
    DocumentFormat.MARKDOWN: _parse_markdown,
    DocumentFormat.TEXT: _parse_text,
    DocumentFormat.CSV: _parse_csv,
    DocumentFormat.JSON: _parse_json,
    DocumentFormat.JSONL: _parse_jsonl,
}
