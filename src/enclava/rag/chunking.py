"""Split parsed blocks into overlapping chunks that follow the document's structure.

Sizes are in characters (language-independent and cheap; 800 characters is about 200 E5
tokens, well inside its 512-token window). A chunk never spans two pages or two sections: a new
heading or page starts a new chunk, so each chunk cites one page and one heading path. Within a
section, consecutive paragraphs are packed together up to ``size``, and each chunk after the
first starts with up to ``overlap`` characters from the end of the previous one. A paragraph
longer than ``size`` is split at sentence boundaries, then at spaces, and only as a last resort
inside a word.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from enclava.rag.parsing import Block

MIN_CHUNK_SIZE = 100
MAX_CHUNK_SIZE = 8000
# Sentence ends, including the ideographic full stop and full-width marks.
_SENTENCE_END = re.compile(r"(?<=[.!?;:\u3002\uff01\uff1f])\s+")


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    index: int
    page: int | None
    heading: str | None

    def embedding_text(self) -> str:
        """What the embedder sees: the section heading gives a short chunk its context."""
        if self.heading and not self.text.startswith(self.heading):
            return f"{self.heading}\n{self.text}"
        return self.text


def validate_sizes(size: int, overlap: int) -> None:
    if not MIN_CHUNK_SIZE <= size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    if not 0 <= overlap <= size // 2:
        raise ValueError("chunk_overlap must be between 0 and half of chunk_size")


def chunk_blocks(blocks: Iterable[Block], *, size: int, overlap: int) -> list[Chunk]:
    validate_sizes(size, overlap)
    return list(_Chunker(size, overlap).run(blocks))


class _Chunker:
    def __init__(self, size: int, overlap: int) -> None:
        self.size = size
        self.overlap = overlap
        self.headings: list[tuple[int, str]] = []
        self.page: int | None = None
        self.index = 0
        # The chunk being filled; ``carried`` while it holds only the previous chunk's tail.
        self.parts: list[str] = []
        self.length = 0
        self.carried = False

    @property
    def heading_path(self) -> str | None:
        return " > ".join(text for _, text in self.headings) or None

    def run(self, blocks: Iterable[Block]) -> Iterator[Chunk]:
        for block in blocks:
            text = block.text.strip()
            if not text:
                continue
            if block.page != self.page:
                yield from self.flush(carry=False)
                self.page = block.page
            if block.heading_level:
                yield from self.flush(carry=False)
                while self.headings and self.headings[-1][0] >= block.heading_level:
                    self.headings.pop()
                self.headings.append((block.heading_level, _one_line(text)[:300]))
                continue
            if len(text) > self.size:
                yield from self.flush(carry=False)
                for piece in _split_long(text, self.size, self.overlap):
                    yield self.emit(piece)
                continue
            if self.parts and self.length + 2 + len(text) > self.size:
                yield from self.flush(carry=True)
                if self.parts and self.length + 2 + len(text) > self.size:
                    self.reset()
            self.add(text)
        yield from self.flush(carry=False)

    def add(self, text: str) -> None:
        self.length += len(text) + (2 if self.parts else 0)
        self.parts.append(text)
        self.carried = False

    def reset(self) -> None:
        self.parts, self.length, self.carried = [], 0, False

    def flush(self, *, carry: bool) -> Iterator[Chunk]:
        if not self.parts:
            return
        text = "\n\n".join(self.parts)
        was_carried = self.carried
        self.reset()
        if was_carried:
            return  # only the previous chunk's tail: nothing new to emit
        yield self.emit(text)
        if carry and self.overlap:
            tail = _tail(text, self.overlap)
            if tail:
                self.add(tail)
                self.carried = True

    def emit(self, text: str) -> Chunk:
        chunk = Chunk(text=text, index=self.index, page=self.page, heading=self.heading_path)
        self.index += 1
        return chunk


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _tail(text: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``text``, starting at a word boundary."""
    if len(text) <= overlap:
        return text
    tail = text[-overlap:]
    space = re.search(r"\s", tail)
    if space and space.end() < len(tail):
        tail = tail[space.end() :]
    return tail.strip()


def _split_long(text: str, size: int, overlap: int) -> Iterator[str]:
    units = _units(text, size)
    window: list[str] = []
    length = 0
    for unit in units:
        added = len(unit) + (1 if window else 0)
        if window and length + added > size:
            piece = " ".join(window)
            yield piece
            tail = _tail(piece, overlap) if overlap else ""
            window, length = ([tail], len(tail)) if tail else ([], 0)
            if window and length + 1 + len(unit) > size:
                window, length = [], 0
            added = len(unit) + (1 if window else 0)
        window.append(unit)
        length += added
    if window:
        yield " ".join(window)


def _units(text: str, size: int) -> Iterator[str]:
    """Sentences, or words of over-long sentences, or slices of over-long words."""
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if len(sentence) <= size:
            yield sentence
            continue
        for word in sentence.split():
            if len(word) <= size:
                yield word
            else:
                yield from (word[i : i + size] for i in range(0, len(word), size))
