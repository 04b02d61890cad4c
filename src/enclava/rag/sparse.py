"""BM25-style sparse vectors for the lexical half of hybrid search.

The document side stores, per term, BM25's saturated and length-normalised term frequency
``tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))``; the query side is 1 per distinct
term. Qdrant multiplies in the inverse document frequency at query time (``Modifier.IDF`` on the
sparse vector), computed over the Qdrant collection, which is one Enclava collection, so
another tenant's documents never change this collection's scores. The dot product is then the
BM25 score.

Terms are Unicode word tokens, NFKC-normalised and case-folded, without stemming (the corpus is
multilingual and a wrong stemmer hurts more than none). Each term maps to a stable 31-bit id
by hashing, so no vocabulary has to be stored or shared between processes.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

K1 = 1.2
B = 0.75
# Average chunk length in terms assumed for length normalisation: about 6 characters per term.
CHARS_PER_TERM = 6.0

_TOKEN = re.compile(r"\w+", re.UNICODE)
# Very frequent English function words; IDF would make them near-worthless anyway, dropping
# them keeps the vectors small.
_STOPWORDS = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in",
        "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were", "will",
        "with",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SparseVector:
    indices: list[int]
    values: list[float]


def tokenize(text: str) -> list[str]:
    normalised = unicodedata.normalize("NFKC", text).casefold()
    return [
        token
        for token in _TOKEN.findall(normalised)
        if (len(token) > 1 or token.isdigit()) and token not in _STOPWORDS
    ]


def term_id(term: str) -> int:
    digest = hashlib.blake2b(term.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def document_vector(text: str, *, chunk_size: int) -> SparseVector:
    terms = tokenize(text)
    if not terms:
        return SparseVector([], [])
    avg_len = max(chunk_size / CHARS_PER_TERM, 10.0)
    norm = K1 * (1 - B + B * len(terms) / avg_len)
    weights: dict[int, float] = {}
    for term, tf in Counter(terms).items():
        index = term_id(term)
        # Two terms whose hashes collide simply share one weight.
        weights[index] = weights.get(index, 0.0) + tf * (K1 + 1) / (tf + norm)
    indices = sorted(weights)
    return SparseVector(indices, [weights[i] for i in indices])


def query_vector(text: str) -> SparseVector:
    indices = sorted({term_id(term) for term in tokenize(text)})
    return SparseVector(indices, [1.0] * len(indices))
