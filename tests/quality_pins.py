"""Records whose quality verdicts are pinned in ``tests/data/quality_verdicts.json``.

The pins were taken from the rules as they stood before they were made fast (hare/stages/quality.py at
commit 4c74d06: langid and the Gopher rules in plain Python), so that the fast rules can be held
to the same verdicts and scores. Three groups:

- ``demo``: the 64 records of a demo run (SmolLM2-135M on vLLM CPU, ``configs/demo.yaml``),
  stored with their text, since a run's store does not outlive the machine.
- ``prose``: records cut from the shipped public-domain corpus (``data/corpus/pd-prose``) by
  :func:`prose_records`, with variants that trip each rule (repeated paragraphs and phrases,
  short cuts, symbols and numbers, truncation, every kind); only their verdicts are stored.
- ``other``: hand-written non-English, code and mixed texts, where a language identifier is
  most likely to disagree; a changed verdict there must be listed in
  ``LANGUAGE_ID_CHANGES`` and argued in docs/quality-dedup.md.

``python -m tests.quality_pins --write`` rewrites the pins from the rules in force: only for a
deliberate change of verdicts, said so in the commit.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "data" / "quality_verdicts.json"
CORPUS = ROOT / "data" / "corpus" / "pd-prose"
KINDS = ("explanation", "textbook", "instruction", "math_word_problem", "logical_deduction", "code")

OTHER = [
    "La photosynthèse est le processus par lequel les plantes transforment la lumière en énergie chimique. "
    "Dans les feuilles, les chloroplastes captent la lumière du soleil grâce à un pigment vert appelé "
    "chlorophylle. La plante puise l'eau par ses racines et le gaz carbonique par de petits pores, puis elle "
    "fabrique du sucre en rejetant de l'oxygène dans l'air.",
    "Die Photosynthese ist der Prozess, mit dem Pflanzen Licht in chemische Energie umwandeln. In den Blättern "
    "fangen die Chloroplasten das Sonnenlicht mit einem grünen Farbstoff ein, der Chlorophyll heißt. Die Pflanze "
    "nimmt Wasser über ihre Wurzeln und Kohlendioxid über kleine Poren auf und baut daraus Zucker, während sie "
    "Sauerstoff an die Luft abgibt.",
    "La fotosíntesis es el proceso mediante el cual las plantas convierten la luz en energía química. En las "
    "hojas, los cloroplastos captan la luz del sol con un pigmento verde llamado clorofila. La planta toma agua "
    "por sus raíces y dióxido de carbono por pequeños poros, y con ellos fabrica azúcar mientras libera oxígeno "
    "al aire.",
    "La fotosintesi è il processo con cui le piante trasformano la luce in energia chimica. Nelle foglie, i "
    "cloroplasti catturano la luce del sole grazie a un pigmento verde chiamato clorofilla. La pianta assorbe "
    "l'acqua attraverso le radici e l'anidride carbonica attraverso piccoli pori, e con esse produce zucchero "
    "liberando ossigeno nell'aria.",
    "A fotossíntese é o processo pelo qual as plantas transformam a luz em energia química. Nas folhas, os "
    "cloroplastos captam a luz do sol com um pigmento verde chamado clorofila. A planta absorve a água pelas "
    "raízes e o gás carbônico por pequenos poros, e com eles produz açúcar enquanto libera oxigênio no ar.",
    "Fotosynthese is het proces waarmee planten licht omzetten in chemische energie. In de bladeren vangen de "
    "bladgroenkorrels het zonlicht op met een groen pigment dat chlorofyl heet. De plant neemt water op via de "
    "wortels en koolstofdioxide via kleine poriën, en maakt daarmee suiker terwijl hij zuurstof aan de lucht "
    "afgeeft.",
    "Here is the program:\n```python\ndef area(width, height):\n    return width * height\n\n"
    "def perimeter(width, height):\n    return 2 * (width + height)\n\nfor i in range(1, 6):\n"
    "    print(i, area(i, i + 1), perimeter(i, i + 1))\n```\nIt prints the area and perimeter of five rectangles.",
    "x = 3; y = 4; z = x * y + 12 / 4 - 7; print(z)  # 17.0\nfor k in range(3): print(k, k * k, k ** 3)\n"
    "values = [1, 2, 3, 4, 5]; total = sum(values); mean = total / len(values); print(total, mean)\n"
    "data = {'a': 1, 'b': 2}; keys = sorted(data); print(keys, data['a'] + data['b'])",
    "The plant needs light to grow. Die Pflanze braucht Licht und Wasser, um zu wachsen, und sie wächst zum "
    "Licht hin. Im Sommer sind die Tage lang und die Pflanze macht viel Zucker. Im Winter sind die Tage kurz, "
    "und sie ruht, bis der Frühling kommt und die Sonne wieder höher steht.",
    "Photosynthesis (Photosynthese, photosynthèse) is how plants make food. The word comes from Greek: phōs, "
    "light, and synthesis, putting together. In German one says Photosynthese, in French photosynthèse, and in "
    "Spanish fotosíntesis; the process is the same in every language, and it feeds nearly all life on Earth.",
    "Problem: 320 * 1 = 320\nSolution: 320 + 160 = 480, 480 / 2 = 240, 240 * 3 = 720, 720 - 240 = 480.\n"
    "Check: 480 / 160 = 3, 3 * 160 = 480, 480 - 320 = 160, 160 * 2 = 320, 320 + 160 = 480.\nThe final answer is 480.",
]


def demo_records() -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("id", "kind", "finish_reason", "text")} for r in load()["demo"]]


def _windows() -> list[tuple[str, str]]:
    """(file, text) windows of whole paragraphs, about 120 words or more each, in file order."""
    out = []
    for path in sorted(CORPUS.glob("*.txt")):
        paras = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
        cur: list[str] = []
        for p in paras:
            cur.append(p)
            if sum(len(x.split()) for x in cur) >= 120:
                out.append((path.name, "\n\n".join(cur)))
                cur = []
    return out


def _variant(i: int, text: str) -> str:
    """Record i of the prose group: the window, or a variant of it that trips a rule."""
    words = text.split()
    v = i % 8
    if v == 1:  # a paragraph said twice
        return text + "\n\n" + text.split("\n\n")[0]
    if v == 2:  # a phrase repeated
        phrase = " ".join(words[3:3 + 3 + i % 5])
        return text + " " + " ".join([phrase] * (3 + i % 7))
    if v == 3:  # a short cut, around the 40-word minimum
        return " ".join(words[:30 + i % 20])
    if v == 4:  # symbols and numbers
        return text + " " + " ".join(f"{'#' * (1 + j % 3)} {j}..." for j in range(i % 23))
    if v == 5:  # lines repeated
        lines = re.split(r"(?<=[.;]) ", text)
        return "\n".join(lines + lines[: max(1, len(lines) // (2 + i % 3))])
    if v == 6:  # a long run-on of the window twice over
        return text + " " + text
    return text


def prose_records() -> list[dict[str, Any]]:
    return [{"id": f"prose-{i}", "source": name, "kind": KINDS[i % len(KINDS)],
             "finish_reason": "length" if i % 11 == 10 else "stop", "text": _variant(i, text)}
            for i, (name, text) in enumerate(_windows())]


def other_records() -> list[dict[str, Any]]:
    return [{"id": f"other-{i}", "kind": "code" if "def " in t or "print(" in t else "explanation",
             "finish_reason": "stop", "text": t} for i, t in enumerate(OTHER)]


def load() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def _write(demo: list[dict[str, Any]]) -> None:
    from hare.config import QualityConfig
    from hare.stages.quality import SCORE_NAMES, judge

    cfg = QualityConfig()

    def pin(r: dict[str, Any], with_text: bool) -> dict[str, Any]:
        v = judge(r["text"], r["kind"], r["finish_reason"], cfg)
        out = {k: r[k] for k in ("id", "kind", "finish_reason")}
        if with_text:
            out["text"] = r["text"]
        return {**out, "reason": v.reason, "scores": [v.scores[n] for n in SCORE_NAMES]}

    data = {
        "about": __doc__.split("\n\n")[1].replace("\n", " "),
        "score_names": list(SCORE_NAMES),
        "demo": [pin(r, True) for r in demo],
        "prose": [pin(r, False) for r in prose_records()],
        "other": [pin(r, False) for r in other_records()],
    }
    lines = [f'{{"about": {json.dumps(data["about"])}', f'"score_names": {json.dumps(data["score_names"])}']
    for group in ("demo", "prose", "other"):  # one record a line: diffs name the records that changed
        rows = ",\n".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in data[group])
        lines.append(f'"{group}": [\n{rows}\n]')
    FIXTURE.write_text(",\n".join(lines) + "}\n", encoding="utf-8")


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    if len(sys.argv) > 2:  # first pins: the demo records from a run's generated partitions
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.concat_tables([pq.read_table(p) for p in sorted(Path(sys.argv[2]).glob("*.parquet"))])
        _write(table.select(["id", "kind", "finish_reason", "text"]).to_pylist())
    else:
        _write(demo_records())
