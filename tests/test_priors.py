"""The shipped priors: taxonomy, axes and templates validate; extractors parse final answers."""

from pathlib import Path

import pytest

from hare.priors.prompts import TEMPLATES, template_for
from hare.priors.taxonomy import DEFAULT_AXES, DEFAULT_TAXONOMY, TaxonomyError, load_axes, load_taxonomy


def test_shipped_taxonomy_is_large_curated_and_clean() -> None:
    leaves = load_taxonomy(DEFAULT_TAXONOMY)
    assert len({leaf.domain for leaf in leaves}) >= 20
    assert len(leaves) >= 300
    assert all(leaf.description for leaf in leaves), "every leaf has a one-line description"
    assert len({leaf.topic.lower() for leaf in leaves}) == len(leaves), "no topic twice, even across domains"


def test_shipped_axes() -> None:
    axes = load_axes(DEFAULT_AXES)
    assert len(axes.audiences) >= 5 and len(axes.styles) >= 6
    assert set(axes.kinds) == set(TEMPLATES)
    assert {"instruction", "math_word_problem", "logical_deduction", "code"} <= set(axes.kinds)


def test_taxonomy_errors_name_file_and_place(tmp_path: Path) -> None:
    dup = tmp_path / "dup.yaml"
    dup.write_text("domains:\n  D:\n    S:\n      - A: one\n      - A: two\n")
    with pytest.raises(TaxonomyError, match=r"dup\.yaml: domains\.D\.S\[1\] duplicates 'D > S > A'"):
        load_taxonomy(dup)
    empty = tmp_path / "empty.yaml"
    empty.write_text("domains:\n  D:\n    S:\n      - '  '\n")
    with pytest.raises(TaxonomyError, match=r"domains\.D\.S\[0\] is an empty topic"):
        load_taxonomy(empty)
    extra = tmp_path / "extra.yaml"
    extra.write_text("domains:\n  Mathematics:\n    Arithmetic and number sense:\n      - Fractions: again\n")
    with pytest.raises(TaxonomyError, match="duplicates 'Mathematics > Arithmetic and number sense > Fractions'"):
        load_taxonomy(DEFAULT_TAXONOMY, extra)


def test_templates_are_versioned_and_render() -> None:
    for kind, tpl in TEMPLATES.items():
        assert tpl.id == kind and tpl.version >= 1
        text = tpl.render(topic="Fractions", description="adding fractions", topic_path="M > A > Fractions",
                          audience="a child", style="a worked example")
        assert "Fractions" in text and "a child" in text and "{" not in text


@pytest.mark.parametrize(
    ("kind", "text", "answer"),
    [
        ("math_word_problem", "Step 1: 3 x 4 = 12.\nFinal answer: 1,200", "1200"),
        ("math_word_problem", "so she pays $18.50.\n**Final Answer:** $18.50", "18.50"),
        ("math_word_problem", "The answer is twelve.", None),
        ("math_word_problem", "Final answer: twelve", None),
        ("logical_deduction", "Clue 3 rules out Bo.\nFinal answer: Ann owns the cat.", "Ann owns the cat."),
        ("logical_deduction", "I cannot decide.", None),
        ("code", "Here:\n```python\nprint(1 + 1)\n```\nIt prints 2.", "print(1 + 1)"),
        ("code", "```Python:\nx = 1\n```", "x = 1"),
        ("code", "```python\nx = 1  # truncated, never closed", None),
        ("explanation", "Anything at all.", None),
    ],
)
def test_answer_extractors(kind: str, text: str, answer: str | None) -> None:
    assert template_for(kind).extract_answer(text) == answer
