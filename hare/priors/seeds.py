"""Seed topics from a corpus, as the HARE paper did: embed, cluster, name each cluster.

``hare seeds from-corpus`` embeds a user corpus (Parquet, JSONL or a ``datasets`` name) with
all-MiniLM-L6-v2, clusters it with FAISS k-means (spherical, on unit vectors), and writes a
topic file in the taxonomy format: one topic per cluster, named by its most distinctive words
(class-based TF-IDF) and carrying the snippets nearest its centroid. ``topics.path`` (or
``topics.extra_paths``) of a run config can take that file instead of, or beside, the taxonomy.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

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


class CorpusError(ValueError):
    """The corpus cannot be read or lacks the text field; the message names it."""


def load_corpus(source: str, text_field: str = "text", split: str = "train", limit: int | None = None) -> list[str]:
    """Texts from a Parquet or JSONL file, or a ``datasets`` name (local path or hub id)."""
    path = Path(source)
    if path.suffix in (".parquet", ".jsonl", ".json") and not path.is_file():
        raise CorpusError(f"corpus file not found: {path}")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if text_field not in table.column_names:
            raise CorpusError(f"corpus {path}: no field {text_field!r} (fields: {table.column_names})")
        texts = table.column(text_field).to_pylist()
    elif path.suffix in (".jsonl", ".json"):
        from hare.store.tables import jsonl_field

        try:
            texts = jsonl_field(path, text_field)
        except ValueError as exc:
            raise CorpusError(f"corpus {exc}") from None
    else:
        import datasets

        ds = datasets.load_dataset(source, split=split)
        if text_field not in ds.column_names:
            raise CorpusError(f"dataset {source}: no field {text_field!r} (fields: {ds.column_names})")
        texts = ds[text_field]
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if limit:
        texts = texts[:limit]
    if not texts:
        raise CorpusError(f"corpus {source}: no non-empty texts in field {text_field!r}")
    return texts


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
