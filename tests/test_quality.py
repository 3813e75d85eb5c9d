"""Each quality rule on crafted good and bad texts; the table stage and its report."""

import math

import pyarrow as pa
import pytest

from hare.config import QualityConfig
from hare.stages.quality import RULES, SCORE_NAMES, english_probability, judge, scores
from hare.tasks.quality import filter_table, quality_report

CFG = QualityConfig()
GOOD = (
    "Photosynthesis is the process plants use to turn light into chemical energy. Inside the leaves, "
    "chloroplasts capture sunlight with a green pigment called chlorophyll. The plant takes in water "
    "through its roots and carbon dioxide through small pores, and it builds sugar from them while "
    "releasing oxygen into the air. For example, a sunflower in a bright garden makes more sugar on a "
    "sunny afternoon than on a cloudy morning, which is why it grows toward the light."
)
MATH_GOOD = (
    "A baker sells muffins for 3 dollars each. On Monday she sells 12 muffins and on Tuesday she sells "
    "twice as many as on Monday. How much money does she make over the two days? First, Tuesday's sales "
    "are 2 times 12, which is 24 muffins. Together she sells 12 plus 24, which is 36 muffins. Each muffin "
    "costs 3 dollars, so she makes 36 times 3, which is 108 dollars.\nFinal answer: 108"
)

GERMAN = (
    "Die Photosynthese ist der Prozess, mit dem Pflanzen Licht in chemische Energie umwandeln. In den Blättern "
    "fangen die Chloroplasten das Sonnenlicht mit einem grünen Farbstoff ein, der Chlorophyll heißt. Die Pflanze "
    "nimmt Wasser über ihre Wurzeln und Kohlendioxid über kleine Poren auf und baut daraus Zucker, während sie "
    "Sauerstoff an die Luft abgibt."
)


@pytest.mark.parametrize(
    ("text", "kind", "finish", "reason"),
    [
        (GOOD, "explanation", "stop", None),
        (MATH_GOOD, "math_word_problem", "stop", None),
        ("Plants use light.", "explanation", "stop", "too_short"),
        (" ".join(["word"] * 2500), "explanation", "stop", "too_long"),
        (GOOD, "explanation", "length", "truncated"),
        ("As an AI language model, I cannot give opinions. " + GOOD, "explanation", "stop", "refusal_or_boilerplate"),
        (GERMAN, "explanation", "stop", "not_english"),
        ("\n".join(["The plant needs light to grow well every day."] * 6 + [GOOD]), "explanation", "stop", "duplicate_lines"),
        (GOOD + " " + "and then the plant grows and then the plant grows " * 12, "explanation", "stop", "repeated_2gram"),
        (GOOD + " " + " ".join(f"{'#' * (1 + i % 4)} leaf{i}" for i in range(24)), "explanation", "stop", "symbols"),
        (GOOD + " " + " ".join(str(i) for i in range(80)), "explanation", "stop", "non_alphabetic"),
        ("Here is the program:\n```python\ndef area(w, h):\n    return w * h\n" + GOOD, "explanation", "stop", "broken_formatting"),
        (MATH_GOOD.replace("\nFinal answer: 108", ""), "math_word_problem", "stop", "no_extractable_answer"),
    ],
)
def test_rules(text: str, kind: str, finish: str, reason: str | None) -> None:
    assert judge(text, kind, finish, CFG).reason == reason


def test_thresholds_come_from_config() -> None:
    assert judge("Plants use light to make sugar.", "explanation", "stop",
                 QualityConfig(min_words={"default": 3})).reason is None
    assert judge(GOOD, "explanation", "length", QualityConfig(drop_truncated=False)).reason is None


def test_filter_table_and_report() -> None:
    table = pa.table({
        "text": [GOOD, "Too short.", MATH_GOOD, GOOD.replace("Photosynthesis", "Respiration")],
        "kind": ["explanation", "explanation", "math_word_problem", "textbook"],
        "finish_reason": ["stop", "stop", "stop", "length"],
        "topic_path": ["Biology > Cells > Photosynthesis", "Biology > Cells > Photosynthesis",
                       "Mathematics > Arithmetic > Fractions", "Biology > Cells > Respiration"],
    })
    kept, rejects = filter_table(table, CFG)
    assert kept.num_rows == 2 and "q_dup_line_frac" in kept.column_names
    assert rejects.column("reject_reason").to_pylist() == ["too_short", "truncated"]
    assert set(rejects.column("reject_stage").to_pylist()) == {"quality"}

    report = quality_report([kept], [rejects])
    assert (report["checked"], report["kept"], report["rejected"]) == (4, 2, 2)
    assert report["reject_reasons"] == {"too_short": 1, "truncated": 1}
    words = report["scores"]["words"]
    assert words["n"] == 2 and words["p25"] <= words["median"] <= words["p75"] and words["iqr"] >= 0
    assert report["by_domain"]["Biology"] == {"kept": 1, "rejects": {"too_short": 1, "truncated": 1}}
    assert report["by_kind"]["math_word_problem"] == {"kept": 1, "rejects": {}}


def test_table_without_text_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no 'text' column"):
        filter_table(pa.table({"body": ["x"]}), CFG)


def test_cheap_rules_first_and_a_reject_skips_the_rest() -> None:
    """A record is judged by the rules in RULES order; after its first failure no other rule runs
    (its later scores are NaN here, null in the table), and the language rule comes after the
    repetition rules, so a repetitive non-English text is rejected for its repetition."""
    assert RULES.index("not_english") > RULES.index("duplicate_10grams")
    short = judge("Plants use light.", "explanation", "stop", CFG)
    assert short.reason == "too_short" and short.scores["words"] == 3
    assert all(math.isnan(short.scores[name]) for name in SCORE_NAMES if name != "words")
    repeated_german = judge(GERMAN.split(".")[0] + ". " + GERMAN.split(".")[0] * 6, "explanation", "stop", CFG)
    assert repeated_german.reason == "repeated_2gram" and math.isnan(repeated_german.scores["english_prob"])
    assert judge(GERMAN, "explanation", "stop", CFG).scores["english_prob"] < 0.1
    kept = judge(GOOD, "explanation", "stop", CFG)
    assert kept.reason is None and not any(math.isnan(v) for v in kept.scores.values())
    assert kept.scores == scores(GOOD)

    kept_t, rejects = filter_table(pa.table({"text": [GOOD, "Plants use light."]}), CFG)
    assert rejects.column("q_words").to_pylist() == [3.0] and rejects.column("q_english_prob").null_count == 1
    assert kept_t.column("q_english_prob").null_count == 0


def test_a_text_cld2_refuses_is_read_without_the_characters() -> None:
    """CLD2 refuses control characters, surrogates and noncharacters as invalid UTF-8: the text
    is identified without them rather than failing the partition."""
    for bad in ("\x00", "\x85", "\ud800", "\ufffe", "\U0010ffff"):
        text = GOOD.replace(". ", f".{bad} ", 2)
        assert english_probability(text) > 0.9
        assert judge(text, "explanation", "stop", CFG).scores["words"] == scores(GOOD)["words"]


def test_an_empty_table_filters_to_empty_tables() -> None:
    kept, rejects = filter_table(pa.table({"text": pa.array([], pa.string())}), CFG)
    assert (kept.num_rows, rejects.num_rows) == (0, 0) and "q_words" in kept.column_names
    assert quality_report([kept], [rejects])["checked"] == 0
