"""Every store key comes from hare/store/layout.py: no other module spells a key or takes one apart.

Checked on the code itself (ast): a string literal (or the literal parts of an f-string) that
starts a key (``runs/``, ``index/``, ``quarantine/``) or holds a piece only keys have
(``/partitions/``, ``/rejects/``, ``_lease.json``, ``.reason.json``, ``/dataset``) is a key built
outside the layout. Docstrings and comments may describe keys; log and error messages are
prose too, so only literals that are not whole sentences count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hare.store.layout import (
    index_shard_ids,
    manifest_key,
    parse_manifest_key,
    published_index_key,
    index_bands_key,
    index_lists_key,
    records_key,
    records_keys,
    report_key,
    report_keys,
)

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for folder in ("hare", "flows", "tasks") for p in sorted((ROOT / folder).rglob("*.py"))]
LAYOUT = ROOT / "hare" / "store" / "layout.py"
KEY_STARTS = ("runs/", "index/", "quarantine/")
KEY_PARTS = ("/partitions/", "/rejects/", "_lease.json", ".reason.json", "/dataset", "decontaminated")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def key_literals(path: Path) -> list[str]:
    """The literals of one module that spell (part of) a store key, as ``path:line: literal``."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in skip:
            continue
        text = node.value
        if " " in text.strip():  # a sentence: a message that names a key, not a key
            continue
        if text.startswith(KEY_STARTS) or any(part in text for part in KEY_PARTS):
            found.append(f"{path.name}:{node.lineno}: {text!r}")
    return found


def test_no_module_but_layout_spells_a_store_key() -> None:
    found = [hit for path in CODE if path != LAYOUT for hit in key_literals(path)]
    assert not found, "store keys built outside hare/store/layout.py:\n" + "\n".join(found)


def test_the_check_finds_a_key_built_by_hand(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('def k(run_id):\n    """runs/<id>/x is fine here."""\n'
                   '    log("moved to quarantine/ and rebuilt")\n    return f"runs/{run_id}/partitions/_index.parquet"\n')
    found = key_literals(bad)
    assert found == ["bad.py:4: 'runs/'", "bad.py:4: '/partitions/_index.parquet'"], "only the key, not the prose"


@pytest.mark.parametrize("key,expected", [
    (manifest_key("r", "p00001"), ("p00001", "generate")),
    (manifest_key("r", "p00001", "decontam"), ("p00001", "decontam")),
])
def test_manifest_keys_are_taken_apart_where_they_are_built(key: str, expected: tuple[str, str]) -> None:
    assert parse_manifest_key(key) == expected


def test_index_shard_keys_are_taken_apart_where_they_are_built() -> None:
    for key in (published_index_key("run-1", "p00002"), index_bands_key(3, "run-1", "p00002"),
                index_lists_key("v1", 3, "run-1", "p00002")):
        assert index_shard_ids(key) == ("run-1", "p00002")


def test_a_stage_has_one_folder_and_one_report_and_earlier_spellings_are_read() -> None:
    assert records_key("r", "p00000", "decontam") == "runs/r/decontam/p00000.parquet"
    assert records_keys("r", "p00000", "decontam") == ["runs/r/decontam/p00000.parquet",
                                                        "runs/r/decontaminated/p00000.parquet"]
    assert report_key("r", "validate") == "runs/r/validate.json"
    assert report_keys("r", "decontam") == ["runs/r/decontam.json", "runs/r/decontamination.json"]
    assert records_keys("r", "p00000", "quality") == [records_key("r", "p00000", "quality")]
