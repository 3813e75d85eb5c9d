"""Rebuild ``data/corpus/pd-prose/`` (the replay backend's shipped corpus) from its sources.

    python data/corpus/build.py --alice ALICE29 --britannica BRIT --areopagitica AREO --opticks OPTICKS

The sources (all public domain; where each comes from is in data/corpus/README.md) are read as
shipped and cleaned with plain rules: front matter, page markers, figure captions, headings,
verse and OCR-damaged paragraphs are dropped, line-end hyphenation is undone, every paragraph
becomes one line, paragraphs are separated by a blank line. Nothing is rewritten.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent / "pd-prose"


def read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8", errors="strict").replace("\r\n", "\n")


def paragraphs(text: str) -> list[list[str]]:
    """Blank-line-separated blocks, each as its list of lines."""
    return [b.split("\n") for b in re.split(r"\n\s*\n", text) if b.strip()]


def join_lines(lines: list[str]) -> str:
    """One paragraph on one line; ``exam-\\nple`` -> ``example``, ``Stratford-\\nupon`` kept when
    the next line starts with a capital."""
    out = ""
    for line in (ln.strip() for ln in lines):
        if not line:
            continue
        if out.endswith("-") and not out.endswith("--") and line[:1].islower():
            out = out[:-1] + line
        elif out.endswith("-") and not out.endswith("--"):
            out += line
        else:
            out = f"{out} {line}" if out else line
    return re.sub(r"\s+", " ", out).strip()


def is_prose(lines: list[str], para: str, min_words: int = 12) -> bool:
    """Prose, not verse, a heading, a table or OCR noise."""
    words = para.split()
    if len(words) < min_words:
        return False
    body = [ln for ln in lines if ln.strip()]
    if len(body) >= 3 and sum(len(ln.strip()) for ln in body) / len(body) < 45:  # verse or a table
        return False
    alpha = sum(1 for w in words if re.fullmatch(r"[\"'(\[]*[A-Za-z][A-Za-z'’\-]*[.,;:!?\"')\]]*", w))
    return alpha / len(words) >= 0.9 and not re.search(r"[|@#{}\\~]", para)


def clean_alice(text: str) -> list[str]:
    text = text.replace("`", "'")
    start = text.index("Alice was beginning")
    end = text.index("THE END")
    out = []
    for lines in paragraphs(text[start:end]):
        para = join_lines(lines)
        if para.startswith("CHAPTER") or not is_prose(lines, para):
            continue
        out.append(para)
    return out


def clean_britannica(text: str) -> list[str]:
    text = text[: text.index("BIBLIOGRAPHY")]
    # page breaks of the OCR: "### END ...", "### START ...", "#### Source ...", "p.772:0"
    text = re.sub(r"\n*### END[^\n]*\n+### START[^\n]*\n#### Source[^\n]*\n+p\.\d+:\d+\n+", "\n", text)
    text = re.sub(r"^#+[^\n]*$|^p\.\d+:\d+$", "", text, flags=re.M)
    out = []
    for lines in paragraphs(text):
        para = join_lines(lines).replace("*", "")
        para = re.sub(r"\s+([,.;:])", r"\1", para)
        if para.startswith("[") or not is_prose(lines, para):
            continue
        # the OCR leaves stray marks in some sentences: drop those sentences, keep the rest
        sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'])", para)
        para = " ".join(x for x in sentences if not re.search(r"[^A-Za-z0-9 .,;:!?\"'()\-’‘“”—]", x))
        if len(para.split()) >= 12:
            out.append(para)
    return out


def clean_areopagitica(text: str) -> list[str]:
    start = text.index("They, who to states")
    out = []
    for lines in paragraphs(text[start:]):
        para = join_lines(lines)
        if is_prose(lines, para):
            out.append(para)
    return out


def clean_opticks(text: str) -> list[str]:
    start = text.index("THE FIRST BOOK OF OPTICKS")
    out = []
    for lines in paragraphs(text[start:]):
        para = join_lines(lines)
        if para.startswith(("[", "FOOTNOTES", "_Note")) or para.isupper():
            continue
        para = re.sub(r"\[in _Fig\._ \d+\.?\]\s*|\[Footnote[^\]]*\]|\[\d+\]", "", para)
        para = para.replace("_", "")
        para = re.sub(r"\s+([,.;:])", r"\1", re.sub(r"\s+", " ", para)).strip()
        if is_prose(lines, para):
            out.append(para)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alice", required=True, help="alice29.txt (Canterbury corpus; PG eBook #11)")
    p.add_argument("--britannica", required=True, help="shksprdata/ancillary/britannica-11th.txt")
    p.add_argument("--areopagitica", required=True, help="miltondata/texts/areopagitica_gut.txt")
    p.add_argument("--opticks", required=True, help="Isaac.Newton-Opticks.txt (PG eBook #33504)")
    args = p.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    works = {
        "alice-in-wonderland.txt": clean_alice(read(args.alice)),
        "britannica-1911-shakespeare.txt": clean_britannica(read(args.britannica)),
        "areopagitica.txt": clean_areopagitica(read(args.areopagitica)),
        "opticks.txt": clean_opticks(read(args.opticks)),
    }
    for name, paras in works.items():
        (OUT / name).write_text("\n\n".join(paras) + "\n", encoding="utf-8")
        words = sum(len(x.split()) for x in paras)
        print(f"{name}: {len(paras)} paragraphs, {words} words")


if __name__ == "__main__":
    main()
