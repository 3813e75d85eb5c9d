"""The words both decontamination searches compare: normalized tokens, word n-grams and key
terms (numbers and content words). Shared by the n-gram search (ngram.py) and the paraphrase
search (paraphrase.py), which would otherwise import each other.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

Gram = tuple[str, ...]

_CALC = re.compile(r"<<[^>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")
_COMMA_DIGITS = re.compile(r",(?=\d{3})")
_BYTE_SPACES = bytes(b if chr(b).isascii() and chr(b).isalnum() else 32 for b in range(256))
STOPWORDS = frozenset(
    "the a an and or of to in on at for with from by is are was were be been it its this that these "
    "those he she they them his her their we you i me my our your as if then than so but not no how "
    "what which who whom when where why many much each every per all some any more most other into "
    "out up down over under about after before there here has have had do does did will would can "
    "could should may might must also just only very one".split()
)


def tokens(text: str) -> list[str]:
    """Normalized words of a text (the unit of every n-gram and term here): runs of ``[a-z0-9]``
    after NFKC and lowercasing. Done with ``bytes.translate`` and ``split`` (any non-ASCII
    character left after NFKC becomes a separator, as in the regular expression ``[a-z0-9]+``):
    in C, and twice the speed of the regular expression."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    if "<<" in text:
        text = _CALC.sub(" ", text)
    if _COMMA_DIGITS.search(text):  # a literal-led search: nearly free where no number has a comma
        text = _THOUSANDS.sub("", text)
    return text.lower().encode("ascii", "replace").translate(_BYTE_SPACES).decode("ascii").split()


def ngrams(toks: Sequence[str], n: int) -> set[Gram]:
    """The set of word n-grams (tuples) of a token list."""
    return set(zip(*[toks[i:] for i in range(n)]))


def key_terms(toks: Iterable[str]) -> set[str]:
    """Numbers and content words: what a rewording of a problem keeps."""
    return {t for t in toks if t.isdigit() or (len(t) > 2 and t not in STOPWORDS)}
