from __future__ import annotations

from enclava.rag.sparse import document_vector, query_vector, term_id, tokenize


def test_tokens_are_normalised_case_folded_and_without_stop_words() -> None:
    assert tokenize("The STRASSE and the Straße, ﬁle №5!") == ["strasse", "strasse", "file", "no5"]
    assert tokenize("Größe 東京 café") == ["grösse", "東京", "café"]


def test_term_ids_are_stable_across_processes() -> None:
    # A hash of the bytes, not Python's per-process salted hash().
    assert term_id("enclava") == term_id("enclava") == 1481886118
    assert 0 <= term_id("x" * 1000) < 2**31


def test_bm25_weights_saturate_and_normalise_for_length() -> None:
    once = document_vector("pump", chunk_size=800)
    many = document_vector("pump " * 10, chunk_size=800)
    diluted = document_vector("pump " + "filler " * 300, chunk_size=800)
    pump = term_id("pump")
    weight = {
        name: dict(zip(v.indices, v.values, strict=True))[pump]
        for name, v in {"once": once, "many": many, "diluted": diluted}.items()
    }
    assert weight["once"] < weight["many"] < 10 * weight["once"]
    assert weight["diluted"] < weight["once"]
    assert once.indices == sorted(once.indices)


def test_query_vectors_weigh_each_distinct_term_once() -> None:
    vector = query_vector("pump pump filter of the")
    assert vector.values == [1.0, 1.0]
    assert sorted(vector.indices) == sorted({term_id("pump"), term_id("filter")})
    assert query_vector("the of and").indices == []
