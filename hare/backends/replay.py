"""ReplayBackend: serves real English text from a corpus instead of running a model.

It exists to run the whole DAG at scale (bench/scale.py) and to re-run the stages over any
existing text dataset, without paying for generation. Like the deterministic fake it never
claims to be a model: ``name`` is ``replay`` and ``model`` is ``replay:<source>`` in every
record.

``model.source`` names the corpus, optionally followed by ``?option=value&...``:

- ``corpus:NAME``: a corpus shipped in ``data/corpus/NAME/`` (each ``.txt`` file one document,
  paragraphs separated by blank lines) or ``data/corpus/NAME.txt``; ``corpus:pd-prose`` is the
  public-domain set described in ``data/corpus/README.md``.
- a path to a ``.txt`` file (one document), a folder of ``.txt`` files, or a ``.jsonl`` /
  ``.parquet`` file with a text column (``column``, default ``text``). Relative paths are
  resolved against the working directory of the engine: prefer absolute paths.

Two modes:

- ``slices`` (default for ``corpus:``, ``.txt`` and folders): every answer is 40-250 words
  (``min_words``/``max_words``; capped at what ``sampling.max_tokens`` allows) of whole
  sentences in 3-8 passages of 1-3 consecutive sentences, taken from one document at places
  picked by (prompt_index, seed). Texts are varied and practically never duplicate each other
  by chance, even at millions of records.
- ``rows`` (default for ``.jsonl`` / ``.parquet``): request ``prompt_index`` gets row
  ``prompt_index mod rows`` verbatim: the dataset replayed through the stages. Indexes past
  the last row wrap around (and so repeat rows).

Planted duplicates (``exact``, ``near``: fractions of all requests; defaults 0.02 and 0.02 in
``slices`` mode, 0 in ``rows`` mode): a planted request answers an exact copy, or a near copy,
of the text served to an earlier prompt index. A near copy has a word replaced or inserted per
~100 words, placed so that its word 5-gram Jaccard with the original stays about 0.9, well
above near dedup's default threshold of 0.8. A copied text must be known without the seed of
the request it was served to, so copies are taken only from *anchors*: prompt indexes picked by
their index alone (``anchor``, default 5%), whose text depends on the index and ``salt``, not
on the seed. Every other text depends on (prompt_index, seed), so a run with another seed gets
other texts, except the anchors and their copies. ``salt`` (default 0) changes every text.

Token counts are estimates (words x 1.3); ``finish_reason`` is ``stop``, or ``length`` when a
text (a long row) is cut at ``sampling.max_tokens``. ``tokens_per_s`` (default 0: as fast as it
can) paces each batch like an engine of that output throughput, so that the stages behind
generation can be watched streaming at a realistic generation speed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import random
import re
import time
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

from hare.backends.base import GenerationRequest, GenerationResult
from hare.store.tables import jsonl_field
from hare.config import ModelConfig, SamplingConfig

CORPUS_DIR = Path(__file__).resolve().parents[2] / "data" / "corpus"
DEFAULT_SOURCE = "corpus:pd-prose"
TOKENS_PER_WORD = 1.3
NEAR_JACCARD = 0.9  # word 5-gram Jaccard of a near copy with its original (dedup's default shingles)
SHINGLE_WORDS = 5
MIN_PASSAGES = 3
MAX_SENTENCE_WORDS = 150  # longer "sentences" (lists, run-ons) are left out of slices

Mode = Literal["slices", "rows"]


class ReplaySourceError(ValueError):
    """A replay source that cannot be used; the message names it."""


@dataclass(frozen=True)
class ReplayOptions:
    mode: Mode = "slices"
    exact: float = 0.02
    near: float = 0.02
    anchor: float = 0.05
    min_words: int = 40
    max_words: int = 250
    column: str = "text"
    salt: int = 0
    tokens_per_s: float = 0.0  # > 0: a batch takes output tokens / this many seconds, like an engine


_FLOATS = ("exact", "near", "anchor", "tokens_per_s")
_INTS = ("min_words", "max_words", "salt")


def parse_source(source: str) -> tuple[str, ReplayOptions]:
    """``location?opt=v&...`` -> (location, options); defaults depend on the location's kind."""
    location, _, query = source.partition("?")
    location = location.strip()
    if not location:
        raise ReplaySourceError(f"replay source {source!r}: no corpus named")
    tabular = location.lower().endswith((".jsonl", ".parquet"))
    opts = ReplayOptions(mode="rows", exact=0.0, near=0.0) if tabular else ReplayOptions()
    given: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        try:
            if key in _FLOATS:
                given[key] = float(value)
            elif key in _INTS:
                given[key] = int(value)
            elif key == "mode":
                if value not in ("slices", "rows"):
                    raise ValueError("mode must be 'slices' or 'rows'")
                given[key] = value
            elif key == "column":
                given[key] = value
            else:
                known = ", ".join(["mode", "column", *_FLOATS, *_INTS])
                raise ValueError(f"unknown option (known: {known})")
        except ValueError as exc:
            raise ReplaySourceError(f"replay source {source!r}: option {key}={value!r}: {exc}") from None
    if given.get("mode") == "slices" and tabular:  # a table read as a corpus: slices' defaults
        given.setdefault("exact", ReplayOptions.exact)
        given.setdefault("near", ReplayOptions.near)
    opts = replace(opts, **given)
    problem = None
    if not (0 <= opts.exact and 0 <= opts.near and opts.exact + opts.near < 1):
        problem = "exact and near must be >= 0 and sum to less than 1"
    elif not 0 < opts.anchor < 1 or opts.exact + opts.near + opts.anchor >= 1:
        problem = "anchor must be in (0, 1) with exact + near + anchor < 1"
    elif not 1 <= opts.min_words <= opts.max_words:
        problem = "need 1 <= min_words <= max_words"
    elif not 0 <= opts.tokens_per_s < math.inf:
        problem = "tokens_per_s must be >= 0"
    if problem:
        raise ReplaySourceError(f"replay source {source!r}: {problem}")
    return location, opts


# --- corpus loading -------------------------------------------------------------------------

_ABBREV = frozenset(
    "mr mrs ms dr st mt jr sr vs etc viz cf ie eg al fig figs vol vols no nos ch chap pp p ed eds "
    "esq rev gen col capt lt sir prof co ltd inc ibid op art sect".split()
)
_WORDLIKE = re.compile(r"^(\W*)([A-Za-z][A-Za-z'’-]*)(\W*)$")
_BOUNDARY = re.compile(r"[.!?]+[\"'’”)\]]*\s+(?=[\"'‘“(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? (and closing quotes) before a capital, except
    after common abbreviations and single-letter initials."""
    text = re.sub(r"\s+", " ", text).strip()
    out, start = [], 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start()].rsplit(" ", 1)[-1].lstrip("\"'‘“([").rstrip(".").lower()
        if text[m.start()] == "." and (before.replace(".", "") in _ABBREV or (len(before) == 1 and before.isalpha())):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def _usable(sentence: str) -> bool:
    """A sentence worth serving: three words or more (not "Obs. 13." or a stray heading), and not
    one so long (a list, a run-on) that it alone would be most of a text."""
    return len(re.findall(r"[A-Za-z]{2,}", sentence)) >= 3 and len(sentence.split()) <= MAX_SENTENCE_WORDS


@dataclass(frozen=True)
class Corpus:
    label: str
    digest: str  # sha256 of the files read, for lineage (model_revision)
    documents: tuple[tuple[str, ...], ...] = ()  # slices mode: sentences of each document
    rows: tuple[str, ...] = ()  # rows mode: one text per row
    vocabulary: tuple[str, ...] = ()  # words near copies substitute


def _files(location: str) -> tuple[list[Path], str]:
    """The files behind a location, and what kind they are (txt, jsonl, parquet)."""
    if location.startswith("corpus:"):
        name = location.removeprefix("corpus:")
        shipped = sorted(p.stem for p in CORPUS_DIR.iterdir() if p.is_dir() or p.suffix == ".txt") \
            if CORPUS_DIR.is_dir() else []
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*", name) or name not in shipped:
            raise ReplaySourceError(f"replay source {location!r}: no shipped corpus {name!r} in {CORPUS_DIR} "
                                    f"(shipped: {', '.join(shipped) or 'none'})")
        path = CORPUS_DIR / name if (CORPUS_DIR / name).is_dir() else CORPUS_DIR / f"{name}.txt"
    elif "://" in location or location.startswith(("package:", "hub:")):
        raise ReplaySourceError(
            f"replay source {location!r} is not a replay corpus: use corpus:NAME (e.g. {DEFAULT_SOURCE}) "
            "or a local .txt/.jsonl/.parquet file or folder of .txt files")
    else:
        path = Path(location).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".txt" and p.is_file())
        if not files:
            raise ReplaySourceError(f"replay source {location!r}: folder {path} holds no .txt file")
        return files, "txt"
    if not path.is_file():
        raise ReplaySourceError(f"replay source {location!r}: file not found: {path}")
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("txt", "jsonl", "parquet"):
        raise ReplaySourceError(f"replay source {location!r}: expected a .txt, .jsonl or .parquet file, "
                                f"or a folder of .txt files")
    return [path], kind


def _read_texts(path: Path, kind: str, column: str, location: str) -> list[str]:
    """Texts of one file: a .txt file is one text; a table gives one text per row."""
    if kind == "txt":
        try:
            return [path.read_text(encoding="utf-8")]
        except UnicodeDecodeError as exc:
            raise ReplaySourceError(f"replay source {location!r}: {path} is not UTF-8 text: {exc}") from None
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ReplaySourceError(f"replay source {location!r}: {path} is not a Parquet file: {exc}") from None
        if column not in schema.names:
            raise ReplaySourceError(f"replay source {location!r}: no column {column!r} in {path} "
                                    f"(columns: {', '.join(schema.names)}); set ?column=NAME")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
        return [v for v in values if isinstance(v, str) and v.strip()]
    try:
        values = jsonl_field(path, column)
    except ValueError as exc:
        raise ReplaySourceError(f"replay source {location!r}: {exc}; set ?column=NAME") from None
    return [v for v in values if isinstance(v, str) and v.strip()]


def _digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


@lru_cache(maxsize=8)
def load_corpus(location: str, mode: Mode = "slices", column: str = "text") -> Corpus:
    """Read a corpus once per process; :class:`ReplaySourceError` names what is wrong."""
    files, kind = _files(location)
    texts = [t for p in files for t in _read_texts(p, kind, column, location)]
    if not texts:
        raise ReplaySourceError(f"replay source {location!r}: no text found")
    digest = _digest(files)
    if mode == "rows":
        return Corpus(label=location, digest=digest, rows=tuple(texts))
    documents = []
    vocab: set[str] = set()
    for text in texts:
        sentences = [s for para in re.split(r"\n\s*\n", text) if para.strip()
                     for s in split_sentences(para) if _usable(s)]
        if sentences:
            documents.append(tuple(sentences))
            if len(vocab) < 50_000:
                vocab.update(w.lower() for s in sentences for w in re.findall(r"[A-Za-z]{3,}", s))
    if not documents:
        raise ReplaySourceError(f"replay source {location!r}: no sentence found")
    return Corpus(label=location, digest=digest, documents=tuple(documents), vocabulary=tuple(sorted(vocab)))


# --- serving --------------------------------------------------------------------------------


def _hash(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big")


def _unit(*parts: object) -> float:
    return _hash(*parts) / 2.0**64


class Replayer:
    """The pure function (prompt_index, seed) -> text behind :class:`ReplayBackend`."""

    ANCHOR_SEARCH = 400  # indexes looked at below a random point for an anchor

    def __init__(self, corpus: Corpus, options: ReplayOptions) -> None:
        self.corpus = corpus
        self.options = options
        if corpus.documents:
            weights = [sum(len(s.split()) for s in d) for d in corpus.documents]
            total = float(sum(weights))
            acc, self._cum = 0.0, []
            for w in weights:
                acc += w / total
                self._cum.append(acc)
            self._typical = [sorted(len(s.split()) for s in doc)[len(doc) // 2] for doc in corpus.documents]

    # which requests are what
    def is_anchor(self, prompt_index: int) -> bool:
        return _unit(self.options.salt, "anchor", prompt_index) < self.options.anchor

    def role(self, prompt_index: int, seed: int) -> tuple[str, int | None]:
        """("anchor"|"exact"|"near"|"unique", the anchor copied or None)."""
        if self.is_anchor(prompt_index):
            return "anchor", None
        u = _unit(self.options.salt, "plant", prompt_index, seed)
        o = self.options
        scale = 1.0 / (1.0 - o.anchor)  # planted shares are of all requests, anchors are never planted
        if u >= (o.exact + o.near) * scale or prompt_index <= 0:
            return "unique", None
        src = self._earlier_anchor(prompt_index, seed)
        if src is None:
            return "unique", None
        return ("exact" if u < o.exact * scale else "near"), src

    def _earlier_anchor(self, prompt_index: int, seed: int) -> int | None:
        start = _hash(self.options.salt, "source", prompt_index, seed) % prompt_index
        for j in range(start, max(-1, start - self.ANCHOR_SEARCH), -1):
            if self.is_anchor(j):
                return j
        for j in range(start + 1, min(prompt_index, start + self.ANCHOR_SEARCH)):
            if self.is_anchor(j):
                return j
        return None

    # texts
    def text(self, prompt_index: int, seed: int, max_words: int | None = None) -> str:
        role, src = self.role(prompt_index, seed)
        if role == "anchor":
            return self._base(("anchor", prompt_index), prompt_index, max_words)
        if role == "unique":
            return self._base(("text", prompt_index, seed), prompt_index, max_words)
        assert src is not None
        original = self._base(("anchor", src), src, max_words)
        if role == "exact":
            return original
        return self._near_copy(original, random.Random(_hash(self.options.salt, "near", prompt_index, seed)))

    def _base(self, key: tuple[object, ...], prompt_index: int, max_words: int | None) -> str:
        o = self.options
        if o.mode == "rows":
            return self.corpus.rows[prompt_index % len(self.corpus.rows)]
        rng = random.Random(_hash(o.salt, *key))
        hi = o.max_words if max_words is None else max(o.min_words, min(o.max_words, max_words))
        d = self._document(rng)
        target = o.min_words + round((hi - o.min_words) * rng.betavariate(1.6, 2.4))
        # at least ~2 typical sentences of the document: a short text from a document of long
        # sentences would otherwise be made of its few short ones, again and again
        target = min(hi, max(target, round(2 * self._typical[d])))
        return self._compose(rng, d, target, hi)

    def _document(self, rng: random.Random) -> int:
        return min(len(self._cum) - 1, bisect.bisect_right(self._cum, rng.random()))

    def _compose(self, rng: random.Random, d: int, target: int, hi: int) -> str:
        """Whole sentences: 3-8 passages of 1-3 consecutive ones from random places of one
        document (more documents only when it is too short), none more than 40% of the text.

        Many short passages, because a corpus is small next to what a large run serves (the
        shipped one is ~150k words; a million texts are ~150M): two texts share most of their
        words only if they drew nearly the same places, which stays rare at a million texts.
        """
        passages = max(MIN_PASSAGES, min(8, round(target / 30)))
        per = max(1, math.ceil(target / passages))
        soft = min(hi, max(round(target * 1.15), target + 10))  # how far past the target a sentence may go
        longest = max(per, round(target * 0.4))
        picked: list[str] = []
        words = 0
        for attempt in range(8):  # the chosen document; then others, only if it is too short
            doc = self.corpus.documents[d if attempt == 0 else self._document(rng)]
            relaxed = attempt >= 4
            used: set[int] = set()
            for _ in range(12 * passages):
                if words >= target and len(picked) >= MIN_PASSAGES:
                    break
                i = rng.randrange(len(doc))
                run: list[str] = []
                run_words = 0
                for k in range(i, min(len(doc), i + 3)):
                    n = len(doc[k].split())
                    if k in used or words + run_words + n > (hi if relaxed else soft) or (
                            run_words + n > longest and not relaxed):
                        break
                    run.append(doc[k])
                    used.add(k)
                    run_words += n
                    if run_words >= per or words + run_words >= target:
                        break
                if run:
                    picked.append(" ".join(run))
                    words += run_words
            if words >= self.options.min_words and len(picked) >= MIN_PASSAGES:
                break
        if not picked:  # a cap shorter than any sentence: the start of one
            doc = self.corpus.documents[d]
            return " ".join(doc[rng.randrange(len(doc))].split()[:hi])
        sep = "\n\n" if rng.random() < 0.3 else " "
        return sep.join(picked)

    def _near_copy(self, text: str, rng: random.Random) -> str:
        """A few words replaced or inserted, placed so that the copy keeps a word
        5-gram Jaccard of about NEAR_JACCARD with the original: an edit inside the text breaks
        5 shingles, one at distance d from the end d + 1. Texts of 100 words and more get one
        edit per ~100 words, spread out; shorter ones one edit close to the end."""
        tokens = re.split(r"(\s+)", text)  # words at even positions, the spaces between at odd ones
        n_words = (len(tokens) + 1) // 2
        shingles = max(1, n_words - SHINGLE_WORDS + 1)
        budget = int(shingles * (1 - NEAR_JACCARD) / (1 + NEAR_JACCARD))  # shingles the edits may break
        if budget >= SHINGLE_WORDS:  # inside the text, spread out: one per slot
            edits = budget // SHINGLE_WORDS
            slot = n_words / edits
            regions = []
            for e in range(edits):  # the middle half of each slot
                lo = int(e * slot + slot * 0.25)
                regions.append(range(lo, max(lo + 1, int(e * slot + slot * 0.75))))
        else:  # close to the end: an edit d words from the end breaks d + 1 shingles
            regions = [range(max(0, n_words - max(1, budget)), n_words)]
        spots = []
        for region in regions:
            words = [w for w in region if w < n_words and _WORDLIKE.match(tokens[2 * w])]
            spots.append(rng.choice(words) if words else min(n_words - 1, rng.choice(region)))
        for w in sorted(spots, reverse=True):
            new = rng.choice(self.corpus.vocabulary) if self.corpus.vocabulary else "very"
            m = _WORDLIKE.match(tokens[2 * w])
            if m and rng.random() < 0.8:  # replace the word, keeping its punctuation and capital
                if new == m.group(2).lower():
                    new += "s"
                new = new.capitalize() if m.group(2)[0].isupper() else new
                tokens[2 * w] = m.group(1) + new + m.group(3)
            else:  # insert a word before it
                tokens[2 * w] = f"{new} {tokens[2 * w]}"
        return "".join(tokens)


def estimate_tokens(text: str) -> int:
    return max(1, round(len(text.split()) * TOKENS_PER_WORD)) if text.strip() else 0


class ReplayBackend:
    """The GenerationBackend that replays a corpus (see the module docstring)."""

    name = "replay"

    def __init__(self, model_cfg: ModelConfig) -> None:
        location, self.options = parse_source(model_cfg.source)
        self.corpus = load_corpus(location, self.options.mode, self.options.column)
        self.replayer = Replayer(self.corpus, self.options)
        self.model = f"replay:{location}"
        opts = json.dumps(self.options.__dict__, sort_keys=True)
        self.model_revision = hashlib.sha256(f"{self.corpus.digest}:{opts}".encode()).hexdigest()[:16]

    def generate(
        self, requests: list[GenerationRequest], sampling: SamplingConfig
    ) -> list[GenerationResult]:
        started = time.monotonic()
        cap_words = max(1, math.floor(sampling.max_tokens / TOKENS_PER_WORD))
        out = []
        for r in requests:
            if r.guided_regex or r.prefix:  # a corpus has no continuation to serve
                out.append(GenerationResult(r.prompt_index, "", 0, 0, "error",
                                            error="unsupported: the replay backend serves no continuation or structured output"))
                continue
            text = self.replayer.text(r.prompt_index, r.seed, cap_words)
            finish = "stop"
            words = text.split()
            if len(words) > cap_words:  # a row longer than max_tokens allows: cut, as an engine would
                text, finish = " ".join(words[:cap_words]), "length"
            prompt_tokens = estimate_tokens(f"{r.system} {r.prompt}")
            out.append(GenerationResult(r.prompt_index, text, prompt_tokens, estimate_tokens(text), finish))
        if self.options.tokens_per_s > 0:  # pace the batch like an engine of that throughput
            time.sleep(max(0.0, sum(r.output_tokens for r in out) / self.options.tokens_per_s
                           - (time.monotonic() - started)))
        return out


def request_seed(seed: int, prompt_index: int) -> int:
    """Per-request seeds for :func:`texts` (a stand-in for the plan's, same spread)."""
    return _hash("texts", seed, prompt_index) >> 1


def texts(n: int, seed: int = 0, source: str = DEFAULT_SOURCE, max_words: int | None = None) -> list[str]:
    """The texts served to prompt indexes 0..n-1, with per-request seeds drawn from ``seed``:
    the replay corpus without Ray, Prefect or a run config (benchmarks, tests)."""
    location, options = parse_source(source)
    replayer = Replayer(load_corpus(location, options.mode, options.column), options)
    return [replayer.text(i, request_seed(seed, i), max_words) for i in range(n)]
