"""Every figure in README.md and docs/*.md comes from a results file of a bench script.

The convention (docs/benchmarks.md, top):

- a results file is cited by its path, ``bench/results/NAME.json`` (``{a,b}`` and ``*`` allowed),
  and every cited file exists and carries ``date``, ``machine``, ``command`` and
  ``git_revision`` (bench/provenance.py writes them);
- figures are tagged by an HTML comment before the table or paragraph that shows them::

      <!-- figures: bench/results/NAME.json: json.path=VALUE; other.path/1024=VALUE -->

  ``json.path`` is dot-separated (list items by index); an optional ``*F`` or ``/F`` scales the
  JSON value; ``VALUE`` is the figure as the text shows it (``14,743``, ``0.961``,
  ``29 min 29 s``), equal to the JSON value rounded to the decimals shown. The test checks each
  value against the file, that the text after the comment (up to the next heading or figures
  comment) shows that VALUE, and that the file is cited there or in the text above it since
  the last heading;
- in docs/benchmarks.md every table with a figure in its body sits after such a comment.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
# README.md and docs/benchmarks.md must cite and tag their figures; every other page of docs/
# that names a results file is checked the same way (its citations and whatever it tags).
MUST_TAG = [ROOT / "README.md", ROOT / "docs" / "benchmarks.md"]
DOCS = MUST_TAG + [p for p in sorted((ROOT / "docs").glob("*.md"))
                   if p not in MUST_TAG and "bench/results/" in p.read_text(encoding="utf-8")]
PROVENANCE = ("date", "machine", "command", "git_revision")
CITE = re.compile(r"bench/results/[A-Za-z0-9_.{},*\-]+?\.json")
TAG = re.compile(r"<!--\s*figures:\s*(bench/results/[^\s:]+\.json)\s*:\s*(.*?)\s*-->", re.S)
DURATION = re.compile(r"^(?:(\d+) h)?\s*(?:(\d+) min)?\s*(?:(\d+(?:\.\d+)?) s)?$")


def _expand(pattern: str) -> list[str]:
    """``a{1,2}b`` -> ``a1b``, ``a2b`` (one level, as the docs write it)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    return [x for alt in m.group(1).split(",") for x in _expand(pattern[:m.start()] + alt + pattern[m.end():])]


def cited_files(text: str) -> dict[str, list[Path]]:
    """Each citation in ``text`` -> the files it names (globs expanded)."""
    out: dict[str, list[Path]] = {}
    for cite in set(CITE.findall(text)):
        paths: list[Path] = []
        for pat in _expand(cite):
            paths.extend(sorted(ROOT.glob(pat)) if "*" in pat else [ROOT / pat])
        out[cite] = paths
    return out


def resolve(doc: Any, path: str) -> Any:
    """``a.b.0.c`` in a JSON document; KeyError naming the first missing step."""
    cur, parts, i = doc, path.split("."), 0
    while i < len(parts):
        if isinstance(cur, list):
            cur, i = cur[int(parts[i])], i + 1
            continue
        # a key may hold dots itself ("lid.176.ftz"): the longest key that exists wins
        for j in range(len(parts), i, -1):
            if isinstance(cur, dict) and ".".join(parts[i:j]) in cur:
                cur, i = cur[".".join(parts[i:j])], j
                break
        else:
            raise KeyError(f"{path}: no {parts[i]!r}")
    return cur


def parse_shown(value: str) -> tuple[float, int] | None:
    """A number as the text shows it -> (value, decimals); a duration in seconds; None if text."""
    v = value.strip()
    d = DURATION.match(v)
    if d and any(d.groups()) and (" s" in v or "min" in v or " h" in v):
        h, m, s = d.groups()
        return (int(h or 0) * 3600 + int(m or 0) * 60 + float(s or 0), 0)
    num = v.replace(",", "")
    if re.fullmatch(r"-?\d+(?:\.\d+)?", num):
        return float(num), len(num.split(".")[1]) if "." in num else 0
    return None


def matches(actual: Any, shown: str) -> bool:
    """Whether the JSON value ``actual`` is the figure ``shown`` (rounded to the decimals shown)."""
    parsed = parse_shown(shown)
    if parsed is None or isinstance(actual, (str, bool)) or actual is None:
        return str(actual) == shown.strip()
    value, decimals = parsed
    # within half a unit of the last decimal shown (486.5 may be shown as 487 or 486)
    return abs(float(actual) - value) <= 0.5 * 10 ** -decimals + 1e-9 * max(1.0, abs(value))


def tags(text: str) -> list[tuple[str, list[tuple[str, str, str]], str, str]]:
    """(file, [(json path with scale, shown value, raw item)], the text the tag covers, its section).

    The tag covers the text after it up to the next heading or figures tag; tags in a row cover
    the text after the last of them. Its section is that text plus the text since the heading
    above the tag (where a citation may sit)."""
    out = []
    for m in TAG.finditer(text):
        rest = text[m.end():]
        lead = re.match(r"(?:\s*<!--\s*figures:.*?-->)*", rest, re.S).end()  # the tags right after this one
        stop = re.search(r"^#{1,6} |<!--\s*figures:", rest[lead:], re.M)
        scope = rest[:lead + stop.start()] if stop else rest
        heads = list(re.finditer(r"^#{1,6} ", text[:m.start()], re.M))
        section = text[heads[-1].start() if heads else 0:m.start()] + scope
        items = []
        for raw in [x.strip() for x in m.group(2).split(";") if x.strip()]:
            path, sep, shown = raw.partition("=")
            assert sep, f"figures tag item {raw!r}: expected path=VALUE"
            items.append((path.strip(), shown.strip(), raw))
        strip = lambda t: re.sub(r"<!--.*?-->", "", t, flags=re.S)  # noqa: E731
        out.append((m.group(1), items, strip(scope), strip(section)))
    return out


def scaled(doc: Any, path: str) -> Any:
    m = re.fullmatch(r"(.+?)\s*([*/])\s*([0-9.]+)", path)
    if not m:
        return resolve(doc, path)
    value = resolve(doc, m.group(1))
    return value * float(m.group(3)) if m.group(2) == "*" else value / float(m.group(3))


def _text(doc: Path) -> str:
    return doc.read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cited_results_file_exists_with_its_provenance(doc: Path) -> None:
    cited = cited_files(_text(doc))
    assert cited, f"{doc.name} cites no results file"
    for cite, paths in cited.items():
        assert paths, f"{doc.name} cites {cite}, which matches no file"
        for path in paths:
            assert path.is_file(), f"{doc.name} cites {path.relative_to(ROOT)}, which does not exist"
            data = json.loads(path.read_text(encoding="utf-8"))
            missing = [f for f in PROVENANCE if not data.get(f)]
            assert not missing, f"{path.relative_to(ROOT)} (cited by {doc.name}) lacks {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_tagged_figures_match_their_results_file(doc: Path) -> None:
    found = tags(_text(doc))
    assert found or doc not in MUST_TAG, f"{doc.name} tags no figure"
    for file, items, scope, section in found:
        path = ROOT / file
        assert path.is_file(), f"{doc.name}: figures tag names {file}, which does not exist"
        cited = {p for paths in cited_files(section).values() for p in paths}
        assert path in cited, f"{doc.name}: the section of the tag of {file} does not cite it next to the figures"
        data = json.loads(path.read_text(encoding="utf-8"))
        for json_path, shown, raw in items:
            actual = scaled(data, json_path)
            assert matches(actual, shown), f"{doc.name}: {raw!r}, but {file} has {json_path} = {actual!r}"
            assert shown in scope, f"{doc.name}: {shown!r} ({json_path} of {file}) is not in the text the tag covers"


def test_every_benchmark_table_is_tagged() -> None:
    """A table with a digit in its body, in docs/benchmarks.md, must follow a figures tag in its section."""
    text = _text(ROOT / "docs" / "benchmarks.md")
    covered = "".join(scope for _, _, scope, _ in tags(text))
    tables = re.findall(r"(?:^\|.*\|[ \t]*\n)+", text, re.M)
    for table in tables:
        body = table.splitlines()[2:]
        if any(re.search(r"\d", row) for row in body):
            assert table in covered, f"docs/benchmarks.md: a table with figures and no figures tag:\n{table[:300]}"


# --- the checker itself ---------------------------------------------------------------------------

def test_the_checker_refuses_a_wrong_figure_a_missing_file_and_an_untagged_value(tmp_path: Path) -> None:
    doc = {"a": {"rate": 0.9611, "tokens": 14743, "runs": [{"s": 1769}]}, "name": "x"}
    assert matches(resolve(doc, "a.rate"), "0.961") and not matches(resolve(doc, "a.rate"), "0.962")
    assert matches(resolve(doc, "a.tokens"), "14,743") and not matches(resolve(doc, "a.tokens"), "14,742")
    assert matches(resolve(doc, "a.runs.0.s"), "29 min 29 s") and not matches(resolve(doc, "a.runs.0.s"), "29 min 30 s")
    assert matches(scaled(doc, "a.tokens/1000"), "14.7") and matches(scaled(doc, "a.rate*100"), "96.1")
    assert matches(resolve(doc, "name"), "x") and not matches(resolve(doc, "name"), "y")
    assert resolve({"lid.176.ftz (model)": {"v": 5.58}}, "lid.176.ftz (model).v") == 5.58
    with pytest.raises(KeyError):
        resolve(doc, "a.missing")
    text = ("<!-- figures: bench/results/f.json: a.tokens=14,743; a.rate=0.961 -->\n"
            "| tokens | rate |\n|---|---|\n| 14,743 | 0.96 |\n\nsource: bench/results/f.json\n\n## next\n")
    ((file, items, scope, section),) = tags(text)
    assert file == "bench/results/f.json" and [i[1] for i in items] == ["14,743", "0.961"]
    assert "14,743" in scope and "0.961" not in scope  # the table shows 0.96: a tag item the text lacks
    assert "## next" not in scope and ROOT / "bench/results/f.json" in cited_files(section)["bench/results/f.json"]
    assert cited_files("see bench/results/nope-{1,2}.json")["bench/results/nope-{1,2}.json"] == [
        ROOT / "bench/results/nope-1.json", ROOT / "bench/results/nope-2.json"]
