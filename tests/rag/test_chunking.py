from __future__ import annotations

import itertools

import pytest

from enclava.rag.chunking import chunk_blocks, validate_sizes
from enclava.rag.parsing import Block


def test_headings_and_pages_start_new_chunks_and_are_recorded() -> None:
    blocks = [
        Block("Guide", heading_level=1),
        Block("Install", heading_level=2),
        Block("Run the installer."),
        Block("Configure", heading_level=2),
        Block("Edit the file."),
        Block("On page two.", page=2),
        Block("Appendix", heading_level=1, page=2),
        Block("Last words.", page=2),
    ]
    chunks = chunk_blocks(blocks, size=500, overlap=50)
    assert [(c.text, c.page, c.heading) for c in chunks] == [
        ("Run the installer.", None, "Guide > Install"),
        ("Edit the file.", None, "Guide > Configure"),
        ("On page two.", 2, "Guide > Configure"),
        ("Last words.", 2, "Appendix"),
    ]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    assert chunks[0].embedding_text() == "Guide > Install\nRun the installer."


def test_paragraphs_are_packed_up_to_the_size_with_overlap() -> None:
    paragraphs = [f"Paragraph {n} says something about subject {n}." for n in range(30)]
    chunks = chunk_blocks([Block(p) for p in paragraphs], size=200, overlap=60)
    assert len(chunks) > 5
    assert all(len(c.text) <= 200 for c in chunks)
    for previous, current in itertools.pairwise(chunks):
        # Each chunk starts with the end of the one before it.
        shared = [k for k in range(1, 61) if previous.text[-k:] == current.text[:k]]
        assert shared and max(shared) >= 20
    # Nothing is lost.
    joined = "\n\n".join(c.text for c in chunks)
    assert all(p in joined for p in paragraphs)


def test_long_paragraphs_split_at_sentences_then_words_then_characters() -> None:
    sentences = " ".join(f"Sentence number {n} is here." for n in range(40))
    long_word = "x" * 450
    chunks = chunk_blocks([Block(sentences), Block(long_word)], size=120, overlap=30)
    assert all(len(c.text) <= 120 for c in chunks)
    assert all(not c.text.startswith(" ") and c.text for c in chunks)
    text = " ".join(c.text for c in chunks)
    for n in range(40):
        assert f"Sentence number {n} is here." in text
    assert sum(c.text.count("x") for c in chunks if set(c.text) == {"x"}) == 450


def test_empty_blocks_make_no_chunks() -> None:
    assert chunk_blocks([Block("   "), Block("Title", heading_level=1)], size=200, overlap=0) == []


@pytest.mark.parametrize(("size", "overlap"), [(50, 0), (9000, 0), (400, 201), (400, -1)])
def test_sizes_are_validated(size: int, overlap: int) -> None:
    with pytest.raises(ValueError):
        validate_sizes(size, overlap)
