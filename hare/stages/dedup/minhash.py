"""MinHash signatures and LSH band keys, vectorised, with a pinned and versioned scheme.

Signatures come from rensa (Rust) in one bulk call per batch of documents, over word
shingles; band keys are a splitmix64 mix of each band's rows, computed with numpy over the
whole batch. Signatures and band keys are stored in the object store (``features/`` and the
shared ``index/``), so the scheme that made them is part of their identity: :data:`SCHEME`
names the library, its algorithm version, and the band mixing; a stored shard of another
scheme is refused with both names (:func:`check_scheme`), never silently compared.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Sequence

import numpy as np

_WORD = re.compile(r"\w+")
SEED = 1
BAND_MIX = "splitmix64-v1"
EXACT_BAND = 255  # the pseudo-band whose key is the record id: exact copies share it


class SchemeMismatch(ValueError):
    """A stored signature or index shard made by another MinHash scheme."""


@lru_cache(maxsize=1)
def scheme() -> str:
    """``rensa<version>-a<algorithm>/<band mix>``: what stored signatures must match."""
    import importlib.metadata

    import rensa

    return f"rensa{importlib.metadata.version('rensa')}-a{rensa.RMinHash.ALGORITHM_VERSION}/{BAND_MIX}"


def check_scheme(found: str | None, where: str) -> None:
    if found != scheme():
        raise SchemeMismatch(f"{where} was written by MinHash scheme {found or 'unknown (before versioning)'}, "
                             f"this hare uses {scheme()}: re-index it with `hare index rebuild` or dedup "
                             f"against a store of the same scheme")


def shingle_sets(texts: Sequence[str], k: int) -> list[list[str]]:
    """Word k-shingles of each lower-cased text (a text shorter than k words is one shingle)."""
    out = []
    for text in texts:
        words = _WORD.findall(text.lower())
        out.append([" ".join(words[j:j + k]) for j in range(max(1, len(words) - k + 1))])
    return out


def signatures(texts: Sequence[str], num_perm: int, shingle_words: int) -> np.ndarray:
    """(n, num_perm) uint32 MinHash signatures (rensa's RMinHash, seed 1)."""
    import rensa

    if not texts:
        return np.zeros((0, num_perm), np.uint32)
    matrix = rensa.RMinHash.digest_matrix_from_token_sets(shingle_sets(texts, shingle_words), num_perm, SEED)
    return np.asarray(matrix.to_rows(), dtype=np.uint32).reshape(len(texts), num_perm)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of signature rows (row-wise for 2-d inputs)."""
    return np.mean(a == b, axis=-1)


def lsh_params(threshold: float, num_perm: int, recall_at_threshold: float = 0.95) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest chance candidates) whose chance of making a
    pair at exactly ``threshold`` a candidate is still ``recall_at_threshold``.

    Candidates are confirmed by their estimated Jaccard afterwards, so a few extra candidates
    cost little and a missed one is a duplicate kept: the choice leans to recall.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold ** rows) ** bands >= recall_at_threshold:
            return bands, rows
    return num_perm, 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys: records sharing a key in any band are LSH candidates.

    The band number is mixed in first, so equal rows in different bands never collide.
    """
    n = sigs.shape[0]
    out = np.empty((n, bands), np.uint64)
    s = sigs.astype(np.uint64)
    for b in range(bands):
        h = _mix64(np.full(n, b + 1, np.uint64))
        for r in range(rows):
            h = _mix64(h ^ s[:, b * rows + r])
        out[:, b] = h
    return out


def id_keys(ids: Sequence[str]) -> np.ndarray:
    """(n,) uint64 keys of the exact pseudo-band: the record id (a hash of the normalized text)."""
    raw = np.array([int(i[:16], 16) for i in ids], dtype=np.uint64)
    return _mix64(raw ^ _mix64(np.full(len(ids), EXACT_BAND + 1, np.uint64)))
