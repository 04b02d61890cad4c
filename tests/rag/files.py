"""Real documents of every supported type, written with the same libraries people use."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any


def pdf(pages: list[str], *, user_password: str | None = None) -> bytes:
    from fpdf import FPDF
    from fpdf.enums import EncryptionMethod

    document = FPDF()
    document.set_font("helvetica", size=11)
    for text in pages:
        document.add_page()
        document.multi_cell(0, 6, text)
    if user_password is not None:
        document.set_encryption(
            owner_password="owner-secret",
            user_password=user_password,
            encryption_method=EncryptionMethod.AES_128,
        )
    return bytes(document.output())


def docx(sections: list[tuple[str, list[str]]], table: list[list[str]] | None = None) -> bytes:
    import docx as python_docx

    document = python_docx.Document()
    document.add_heading("Handbook", level=0)
    for heading, paragraphs in sections:
        document.add_heading(heading, level=1)
        for paragraph in paragraphs:
            document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, value in enumerate(row):
                grid.cell(r, c).text = value
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def xlsx(sheets: dict[str, list[list[Any]]]) -> bytes:
    import openpyxl

    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def pptx(slides: list[tuple[str, list[str]]], notes: str | None = None) -> bytes:
    from pptx import Presentation

    presentation = Presentation()
    layout = presentation.slide_layouts[1]  # title and content
    for title, bullets in slides:
        slide = presentation.slides.add_slide(layout)
        slide.shapes.title.text = title
        body = slide.placeholders[1].text_frame
        body.text = bullets[0]
        for bullet in bullets[1:]:
            body.add_paragraph().text = bullet
        if notes:
            slide.notes_slide.notes_text_frame.text = notes
    buffer = io.BytesIO()
    presentation.save(buffer)
    return buffer.getvalue()


def html(title: str, sections: list[tuple[str, str]]) -> bytes:
    body = "".join(f"<h2>{h}</h2><p>{p}</p>" for h, p in sections)
    return (
        f"<!doctype html><html><head><title>{title}</title>"
        "<style>.x{color:red}</style><script>var secret = 'do not index me';</script>"
        f"</head><body><nav>Home | About</nav><main>{body}</main></body></html>"
    ).encode()


def markdown(sections: list[tuple[str, str]]) -> bytes:
    parts = ["# Guide\n"]
    for heading, text in sections:
        parts.append(f"## {heading}\n\n{text}\n")
    return "\n".join(parts).encode()


def csv_bytes(rows: list[list[str]]) -> bytes:
    import csv

    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def jsonl_bytes(records: list[dict[str, Any]]) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n"


def corrupt_zip_named(kind: str) -> bytes:
    """Starts like an Office file (zip magic) but the archive is cut short."""
    data = {
        "docx": docx([("A", ["b"])]),
        "xlsx": xlsx({"S": [["a"]]}),
        "pptx": pptx([("A", ["b"])]),
    }
    return data[kind][:200]


def zip_without_office_parts() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("hello.txt", "not an office document")
    return buffer.getvalue()
