"""Seed topics from a corpus, as the HARE paper did: embed, cluster, name each cluster.

``hare seeds from-corpus`` embeds a user corpus (Parquet, JSONL or a ``datasets`` name) with
all-MiniLM-L6-v2, clusters it with FAISS k-means (spherical, on unit vectors), and writes a
topic file in the taxonomy format: one topic per cluster, named by its most distinctive words
(class-based TF-IDF) and carrying the snippets nearest its centroid. ``topics.path`` (or
``topics.extra_paths``) of a run config can take that file instead of, or beside, the taxonomy.

The corpus is streamed (Parquet by record batch, JSONL by line, a dataset in streaming mode) and
what is embedded is a seeded uniform sample of it (reservoir sampling, ``--sample``), so a corpus
of any size needs the memory of the sample only: topics are a property of the distribution, which
a sample of some thousands of texts already shows.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml

_STOP = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being it its "
    "this that these those there their they them he she his her we our you your i me my not no so "
    "than then too very can could will would should may might must do does did has have had having "
    "into over under about after before between through during which who whom what when where why how "
    "all any both each few more most other some such only own same just also one two three use used "
    "using make made many much like get got".split()
)
_TOKEN = re.compile(r"[a-z][a-z'-]{2,}")
T = TypeVar("T")


class CorpusError(ValueError):
    """The corpus cannot be read or lacks the text field; the message names it."""


DEFAULT_SAMPLE = 20_000  # texts embedded and clustered: enough for k-means to find the topics
# of a corpus, few enough that the embeddings (384 floats each) and the texts fit any laptop


@dataclass(frozen=True)
class CorpusSample:
    """What gets embedded: a uniform sample of the corpus's texts (in corpus order) and how many
    non-empty texts were read to draw it."""

    texts: list[str]
    seen: int


def iter_corpus(source: str, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """The non-empty texts of a Parquet or JSONL file, or a ``datasets`` name (local path or hub
    id), one at a time: Parquet by record batch, JSONL by line, a dataset in streaming mode, so
    that no reader holds more than one batch of the corpus. A missing file or field is a
    :class:`CorpusError` naming it."""
    path = Path(source)
    if path.suffix in (".parquet", ".jsonl", ".json") and not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    if path.suffix == ".parquet":
        values = _parquet_values(path, text_field)
    elif path.suffix in (".jsonl", ".json"):
        values = _jsonl_values(path, text_field)
    else:
        values = _dataset_values(source, text_field, split)
    return (t for t in values if isinstance(t, str) and t.strip())


def _parquet_values(path: Path, text_field: str, batch_rows: int = 4096) -> Iterator[object]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    if text_field not in pf.schema_arrow.names:
        raise CorpusError(f"corpus {path}: no field {text_field!r} (fields: {pf.schema_arrow.names})")
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[text_field]):
        yield from batch.column(0).to_pylist()


def _jsonl_values(path: Path, text_field: str) -> Iterator[object]:
    """The field's values line by line (hare/store/tables.py's one JSONL reader, streamed)."""
    from hare.store.tables import iter_jsonl_field

    try:
        yield from iter_jsonl_field(path, text_field)
    except ValueError as exc:
        raise CorpusError(f"corpus {exc}") from None


def _dataset_values(source: str, text_field: str, split: str) -> Iterator[object]:
    import datasets

    ds = datasets.load_dataset(source, split=split, streaming=True)
    fields = list(ds.features) if ds.features is not None else None
    if fields is not None and text_field not in fields:
        raise CorpusError(f"dataset {source}: no field {text_field!r} (fields: {fields})")
    for row in ds:
        if text_field not in row:
            raise CorpusError(f"dataset {source}: no field {text_field!r} (fields: {list(row)})")
        yield row[text_field]


def reservoir_sample(items: Iterable[T], size: int, seed: int = 0) -> tuple[list[T], int]:
    """A uniform sample of ``size`` items of a stream of unknown length, in stream order, and the
    stream's length (Vitter's algorithm R): memory is the sample, never the stream. Seeded, so
    the same corpus and seed give the same sample; a stream shorter than ``size`` is returned whole."""
    if size < 1:
        raise CorpusError(f"sample must be at least 1, got {size}")
    rng = random.Random(seed)
    reservoir: list[tuple[int, T]] = []
    seen = 0
    for seen, item in enumerate(items, 1):
        if seen <= size:
            reservoir.append((seen, item))
        else:
            j = rng.randrange(seen)
            if j < size:
                reservoir[j] = (seen, item)
    reservoir.sort(key=lambda pair: pair[0])
    return [item for _, item in reservoir], seen


def load_corpus(source: str, text_field: str = "text", split: str = "train", limit: int | None = None,
                sample: int = DEFAULT_SAMPLE, seed: int = 0) -> CorpusSample:
    """A seeded uniform sample of ``sample`` texts of the corpus (every text when it has fewer),
    streamed: memory is bounded by the sample, not the corpus. ``limit``: read only the first
    ``limit`` non-empty texts."""
    texts, seen = reservoir_sample(islice(iter_corpus(source, text_field, split), limit or None), sample, seed)
    if not texts:
        raise CorpusError(f"corpus {source}: no non-empty texts in field {text_field!r}")
    return CorpusSample(texts, seen)


def cluster(emb: np.ndarray, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means with FAISS: (assignment per row, unit centroids)."""
    import faiss

    if k < 2 or k > emb.shape[0]:
        raise CorpusError(f"clusters must be between 2 and the number of texts ({emb.shape[0]}), got {k}")
    km = faiss.Kmeans(emb.shape[1], k, niter=30, seed=seed, spherical=True, verbose=False)
    km.train(np.ascontiguousarray(emb, dtype=np.float32))
    _, assign = km.index.search(np.ascontiguousarray(emb, dtype=np.float32), 1)
    return assign.ravel(), km.centroids


def distinctive_words(texts_by_cluster: Sequence[Sequence[str]], top: int = 3) -> list[list[str]]:
    """Class-based TF-IDF: words frequent in a cluster and rare in the others."""
    counts = [Counter(w for t in texts for w in _TOKEN.findall(t.lower()) if w not in _STOP)
              for texts in texts_by_cluster]
    df = Counter(w for c in counts for w in c)
    k = len(counts)
    out = []
    for c in counts:
        total = sum(c.values()) or 1
        scored = sorted(c, key=lambda w: (-(c[w] / total) * math.log(1 + k / df[w]), w))
        out.append(scored[:top])
    return out


def seeds_from_texts(
    texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray], clusters: int,
    snippets: int = 3, seed: int = 0, domain: str = "Corpus", snippet_chars: int = 240,
) -> dict[str, Any]:
    """The topic file (a dict in the taxonomy format), one topic per cluster, largest first."""
    from hare.progress import embed_in_batches, status

    emb = embed_in_batches(embed, texts, "embedding the corpus")
    with status("seed topics") as step:
        step(f"k-means, {clusters} clusters")
        assign, centroids = cluster(emb, clusters, seed)
        step("naming the clusters")
        members = [np.flatnonzero(assign == c) for c in range(clusters)]
        names = distinctive_words([[texts[i] for i in m] for m in members])
    topics: list[dict[str, Any]] = []
    used: Counter = Counter()
    for c in sorted(range(clusters), key=lambda c: (-len(members[c]), c)):
        if len(members[c]) == 0:
            continue
        nearest = members[c][np.argsort(-(emb[members[c]] @ centroids[c]))][:snippets]
        reps = [" ".join(texts[i].split())[:snippet_chars] for i in nearest]
        name = ", ".join(names[c]) or f"cluster {c}"
        used[name] += 1
        if used[name] > 1:
            name = f"{name} ({used[name]})"
        topics.append({"topic": name, "description": f"texts like: {reps[0][:120]}",
                       "snippets": reps, "size": int(len(members[c]))})
    return {"version": 1, "source": "hare seeds from-corpus", "domains": {domain: {"Clusters": topics}}}


def write_seed_file(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100))
