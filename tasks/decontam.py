"""Stage ``decontam``: drop records that leak benchmark items (n-gram, then paraphrase).

:func:`decontaminate_table` is the plain function over an Arrow table of records;
:class:`Decontam` is the stage object the flow runs on each partition as soon as the stage
before it commits: kept records and rejects (with benchmark, item id, method and score) under a
``decontam`` manifest, whose extras (per benchmark: records, methods, items) merge into the
run's report (``decontam.json``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from hare.stages.decontam.benchmarks import load_benchmark
from hare.backends.base import GenerationRequest, GenerationResult
from hare.config import DecontamConfig, EmbeddingConfig, ModelConfig, RunConfig, SamplingConfig
from hare.stages.decontam.judge import Judge
from hare.stages.decontam.ngram import Decontaminator
from hare.store.schema import DECONTAM_REJECT_SCHEMA
from hare.stages.base import RecordStage, StageResult, add_counts, partition_stats

STAGE = "decontam"


def build_decontaminator(cfg: DecontamConfig, embed: Callable[[list[str]], Any] | None = None,
                         embedding: EmbeddingConfig | None = None, judge: Judge | None = None) -> Decontaminator:
    """The benchmarks' items loaded and indexed; ``embed``: the paraphrase search's embedder
    (default: MiniLM in this process); ``embedding``: the run's embedding actors, which decide
    whether ``every_window: auto`` embeds every window (GPUs) or not (None: this process);
    ``judge``: asks about the candidates in the judge band (None: the similarity decides)."""
    if embed is None:
        from hare.engines.embed import embed

    items = [item for spec in cfg.benchmarks for item in load_benchmark(spec)]
    return Decontaminator(cfg, items, embed, every_window=cfg.every_window_on(embedding), judge=judge)


def engine_judge(model: ModelConfig, run_id: str, seed: int) -> Judge:
    """A :class:`Judge` whose batches go to the run's own engines (the driver holds them until
    the last partition's decontamination ends: flows/streaming.py), in turn (each worker from
    its own first engine, so workers spread), through ``call_engine`` (which rides out an
    engine restart); an engine gone for good hands the batch to the next. No engine left: the
    partition fails with that said, and ``hare rerun`` redoes it; nothing committed is lost."""
    import itertools
    import os

    from hare.engines.engine import EngineGone, call_engine, run_engine_names

    turn = itertools.count(os.getpid())

    def generate(requests: list[GenerationRequest]) -> list[GenerationResult]:
        names = run_engine_names(run_id)
        first = next(turn) % len(names) if names else 0
        for name in names[first:] + names[:first]:
            try:
                return call_engine(name, requests, requests[0].sampling or SamplingConfig(), model)[0]
            except EngineGone:
                continue  # it left the pool: the next engine judges this batch
        raise EngineGone(f"decontam.judge: run {run_id} has no engine to judge with (they were released or "
                         "left the pool); rerun the partition, or set decontam.judge: false")

    return Judge(generate, seed)


def decontaminate_table(
    records: pa.Table, dec: Decontaminator, default_kind: str = "instruction"
) -> tuple[pa.Table, pa.Table]:
    """(kept records, rejects: the same columns plus the benchmark item each one leaked).

    Works on any table with a ``text`` column; ``kind`` (which picks N) defaults to
    ``default_kind`` when the table has none.
    """
    if "text" not in records.column_names:
        raise ValueError(f"no 'text' column to decontaminate (columns: {records.column_names})")
    texts = [t or "" for t in records.column("text").to_pylist()]
    kinds = records.column("kind").to_pylist() if "kind" in records.column_names else [default_kind] * len(texts)
    matches = dec.check(texts, kinds)
    hits = [m for m in matches if m is not None]
    rejects = records.filter(pa.array([m is not None for m in matches], pa.bool_()))
    extra = {
        "reject_stage": [STAGE] * len(hits),
        "reject_reason": [f"contaminated:{m.method}:{m.benchmark}" for m in hits],
        "benchmark": [m.benchmark for m in hits],
        "benchmark_item": [m.item_id for m in hits],
        "match_method": [m.method for m in hits],
        "match_score": [m.score for m in hits],
    }
    for name, values in extra.items():
        if name not in rejects.column_names:
            rejects = rejects.append_column(name, pa.array(values, type=DECONTAM_REJECT_SCHEMA.field(name).type
                                                           if name in DECONTAM_REJECT_SCHEMA.names else None))
    return records.filter(pa.array([m is None for m in matches], pa.bool_())), rejects


def decontam_aggregate(rejects: pa.Table) -> dict[str, Any]:
    """One partition's own figures: records matched per benchmark, by method, and which items."""
    per: dict[str, dict[str, Any]] = {}
    rows = rejects.select(["benchmark", "benchmark_item", "match_method"]).to_pylist() if rejects.num_rows else []
    for r in rows:
        b = per.setdefault(r["benchmark"], {"records": 0, "by_method": {}, "items": [], "items_by_method": {}})
        b["records"] += 1
        add_counts(b["by_method"], {r["match_method"]: 1})
        if r["benchmark_item"] not in b["items"]:
            b["items"].append(r["benchmark_item"])
        route = b["items_by_method"].setdefault(r["match_method"], [])
        if r["benchmark_item"] not in route:
            route.append(r["benchmark_item"])
    return {"benchmarks": per}


def merge_decontam(aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's own figures: per benchmark, records matched, by method, and items."""
    per: dict[str, dict[str, Any]] = {}
    judged = [agg["judge"] for agg in aggregates if "judge" in agg]
    for agg in aggregates:
        for name, b in agg["benchmarks"].items():
            slot = per.setdefault(name, {"records": 0, "by_method": {}, "items": set(), "items_by_method": {}})
            slot["records"] += b["records"]
            add_counts(slot["by_method"], b["by_method"])
            slot["items"].update(b["items"])
            for method, items in b.get("items_by_method", {}).items():  # older aggregates have none
                slot["items_by_method"].setdefault(method, set()).update(items)
    order = lambda items: sorted(items, key=lambda x: (len(x), x))  # noqa: E731 - item ids are numbers as text
    out: dict[str, Any] = {
        "benchmarks": {name: {"records": b["records"], "by_method": b["by_method"], "items": order(b["items"]),
                              "items_by_method": {m: order(v) for m, v in sorted(b["items_by_method"].items())}}
                       for name, b in per.items()},
    }
    if judged:  # a run with the judge on: its pairs, verdicts and tokens over all partitions
        out["judge"] = {k: round(sum(j.get(k, 0) for j in judged), 3) if k == "seconds" else sum(j.get(k, 0) for j in judged)
                        for k in (*Judge.FIGURES, "seconds")}
    return out


def decontam_report(kept: pa.Table, rejects: pa.Table) -> dict[str, Any]:
    """Checked, kept, rejected and, per benchmark, records matched, by method, and which items
    (``hare decontam`` on a file: the same report as a run's)."""
    result = StageResult(kept, rejects, decontam_aggregate(rejects))
    return Decontam().report([partition_stats(result, kept.num_rows + rejects.num_rows)])


class Decontam(RecordStage):
    """Stage ``decontam``: n-gram overlap, then confirmed paraphrase search, per benchmark."""

    name, title = STAGE, "Decontamination"

    def enabled(self, cfg: RunConfig) -> bool:
        return bool(cfg.decontam.benchmarks)

    def setup(self, cfg: RunConfig, run_id: str) -> Decontaminator:
        """The benchmarks' n-grams and item embeddings, built once per worker and settings and
        reused by every partition the worker decontaminates."""
        from hare.engines.embedders import pool_embed

        judge = engine_judge(cfg.model, run_id, cfg.seed) if cfg.decontam.judge_on(cfg.model) else None
        return build_decontaminator(cfg.decontam, pool_embed(run_id), cfg.embedding, judge)

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        dec = self.ready(cfg, run_id)
        if dec.judge is not None:
            dec.judge.take_figures()  # what an earlier, failed partition of this worker asked is not this one's
        kept, rejects = decontaminate_table(records, dec)
        aggregate = decontam_aggregate(rejects)
        if dec.judge is not None:
            aggregate["judge"] = dec.judge.take_figures()
        return StageResult(kept, rejects, aggregate)

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_decontam(aggregates)

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        lines = [self.heading(), "",
                 f"{report['rejected']} of {report['checked']} records dropped as benchmark leaks "
                 "(n-gram overlap, then confirmed paraphrase search); each is in `rejects/decontam/` with "
                 "its benchmark item, method and score.", "",
                 "| benchmark | records | by method | items matched, by route |", "|---|---|---|---|"]
        for name, b in report["benchmarks"].items():
            methods = ", ".join(f"{k}: {v}" for k, v in sorted(b["by_method"].items()))
            routes = b.get("items_by_method") or {"all": b["items"]}
            items = "; ".join(f"{m}: {', '.join(v[:20])}" + (f" (+{len(v) - 20})" if len(v) > 20 else "")
                              for m, v in routes.items())
            lines.append(f"| {name} | {b['records']} | {methods} | {items} |")
        judge = report.get("judge")
        if judge:
            per = judge["pairs"] / report["checked"] if report["checked"] else 0.0
            dropped = sum(b["by_method"].get("paraphrase_judge", 0) for b in report["benchmarks"].values())
            lines += ["", f"Judge ({cfg.model.name}, the run's own engines): {judge['pairs']} candidate pairs in the "
                      f"similarity band {cfg.decontam.judge_low}..{cfg.decontam.judge_high} asked ({per:.3f} per "
                      f"record checked): {judge['yes']} yes, {judge['no']} no, {judge['unanswered']} unanswered (the "
                      f"similarity decided); {dropped} records dropped on its yes (`paraphrase_judge`); "
                      f"{judge['prompt_tokens']} prompt and {judge['output_tokens']} output tokens, {judge['seconds']} s."]
        return [*lines, ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        c = cfg.decontam
        return ((", ".join(b.name for b in c.benchmarks), c.describe(c.every_window_on(cfg.embedding), c.judge_on(cfg.model)))
                if c.benchmarks else ("off", "no benchmark configured"))

    def summary(self, report: dict[str, Any]) -> str:
        return f"{self.name} {report['rejected']}"
