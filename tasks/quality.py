"""Stage ``quality``: rules first, every reject with its rule's name; scores kept for the report.

:func:`filter_table` is the plain function over a table of records (any table with ``text``;
``kind`` and ``finish_reason`` when present); :class:`Quality` is the stage object the flow runs
on each partition as soon as it is generated; its per-partition aggregate (counts, reasons, a
sketch per score) merges into the quality-consistency report (`runs/<run_id>/quality.json`,
also on the dataset card) without reading any record again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hare.stages import sketch
from hare.config import QualityConfig, RunConfig
from hare.stages.quality import SCORE_NAMES, judge_batch
from hare.stages.base import RecordStage, StageResult, add_counts, partition_stats, reasons_table

STAGE = "quality"


def filter_table(records: pa.Table, cfg: QualityConfig, default_kind: str = "explanation") -> tuple[pa.Table, pa.Table]:
    """(kept with ``q_<score>`` columns, rejects with the same plus reject_stage and reject_reason).

    The whole table is judged as one batch (hare.stages.quality.judge_batch); a reject's scores of the
    rules after the one it failed are null (those rules were skipped).
    """
    if "text" not in records.column_names:
        raise ValueError(f"no 'text' column to filter (columns: {records.column_names})")
    n = records.num_rows
    texts = [t or "" for t in records.column("text").to_pylist()]
    kinds = records.column("kind").to_pylist() if "kind" in records.column_names else [default_kind] * n
    finish = records.column("finish_reason").to_pylist() if "finish_reason" in records.column_names else ["stop"] * n
    verdicts = judge_batch(texts, kinds, [f or "stop" for f in finish], cfg)
    scored = records
    for name in SCORE_NAMES:  # a rule skipped after an earlier reject leaves its score null
        values = np.array([v.scores[name] for v in verdicts], np.float64)
        scored = scored.append_column(f"q_{name}", pa.array(values, pa.float64(), mask=np.isnan(values)))
    bad = pa.array([v.reason is not None for v in verdicts], pa.bool_())
    rejects = scored.filter(bad)
    reasons = [v.reason for v in verdicts if v.reason is not None]
    rejects = rejects.append_column("reject_stage", pa.array([STAGE] * len(reasons), pa.string()))
    rejects = rejects.append_column("reject_reason", pa.array(reasons, pa.string()))
    return scored.filter(pc.invert(bad)), rejects


def _domain(topic_path: str | None) -> str:
    return (topic_path or "(none)").split(" > ")[0]


def quality_aggregate(kept: pa.Table, rejects: pa.Table) -> dict[str, Any]:
    """One partition's own mergeable figures (the base counts the rest): kept and reasons per
    domain and kind, a sketch per score."""
    def column(t: pa.Table, name: str, default: str = "(none)") -> list[str]:
        return [v or default for v in t.column(name).to_pylist()] if name in t.column_names else [default] * t.num_rows

    by: dict[str, dict[str, dict[str, Any]]] = {"domain": {}, "kind": {}}
    reasons = rejects.column("reject_reason").to_pylist() if rejects.num_rows else []
    for axis, kept_vals, rej_vals in (
        ("domain", [_domain(p) for p in column(kept, "topic_path")], [_domain(p) for p in column(rejects, "topic_path")]),
        ("kind", column(kept, "kind"), column(rejects, "kind")),
    ):
        for v in kept_vals:
            by[axis].setdefault(v, {"kept": 0, "rejects": {}})["kept"] += 1
        for v, reason in zip(rej_vals, reasons):
            add_counts(by[axis].setdefault(v, {"kept": 0, "rejects": {}})["rejects"], {reason: 1})
    return {"by_domain": by["domain"], "by_kind": by["kind"],
            "sketches": {name: sketch.sketch(kept.column(f"q_{name}").to_pylist()) for name in SCORE_NAMES}}


def merge_quality(aggregates: list[dict[str, Any]]) -> dict[str, Any]:
    """The quality report's own figures from its partitions' aggregates: score spread
    (percentiles, IQR) over kept records, kept and rejects by reason per domain and kind."""
    by: dict[str, dict[str, dict[str, Any]]] = {"by_domain": {}, "by_kind": {}}
    for agg in aggregates:
        for axis in by:
            for value, fig in agg[axis].items():
                slot = by[axis].setdefault(value, {"kept": 0, "rejects": {}})
                slot["kept"] += fig["kept"]
                add_counts(slot["rejects"], fig["rejects"])
    return {
        "scores": {name: sketch.spread(sketch.merge(a["sketches"][name] for a in aggregates)) for name in SCORE_NAMES},
        "score_accuracy": f"percentiles from merged per-partition sketches, within {sketch.ACCURACY:.0%}",
        "by_domain": dict(sorted(by["by_domain"].items())),
        "by_kind": dict(sorted(by["by_kind"].items())),
    }


def quality_report(kept: list[pa.Table], rejects: list[pa.Table]) -> dict[str, Any]:
    """Spread of every score over kept records; reject counts by reason, per domain and kind."""
    return Quality().report([partition_stats(StageResult(k, r, quality_aggregate(k, r)), k.num_rows + r.num_rows)
                             for k, r in zip(kept, rejects)])


class Quality(RecordStage):
    """Stage ``quality``: the rules of hare.stages.quality, every reject with its rule's name."""

    name, title = STAGE, "Quality"

    def process(self, cfg: RunConfig, run_id: str, partition_id: str, records: pa.Table) -> StageResult:
        kept, rejects = filter_table(records, cfg.quality)
        return StageResult(kept, rejects, quality_aggregate(kept, rejects))

    def merge(self, aggregates: list[dict[str, Any]]) -> dict[str, Any]:
        return merge_quality(aggregates)

    def card_section(self, report: dict[str, Any], cfg: RunConfig) -> list[str]:
        lines = [self.heading(), "",
                 f"{report['kept']} of {report['checked']} generated records kept by the quality rules; "
                 "every reject keeps its rule in `rejects/quality/`.", "",
                 *(reasons_table(report) or ["| reject reason | records |", "|---|---|", ""]),
                 "Spread of each score over the kept records (consistency):", "",
                 "| score | p5 | p25 | median | p75 | p95 | IQR |", "|---|---|---|---|---|---|---|"]
        for name, s in report["scores"].items():
            if s:
                lines.append(f"| {name} | {s['p5']} | {s['p25']} | {s['median']} | {s['p75']} | {s['p95']} | {s['iqr']} |")
        lines += ["", "| kind | kept | rejects by reason |", "|---|---|---|"]
        for kind, v in report["by_kind"].items():
            lines.append(f"| {kind} | {v['kept']} | {', '.join(f'{r}: {n}' for r, n in v['rejects'].items())} |")
        return [*lines, ""]

    def settings_row(self, cfg: RunConfig) -> tuple[str, str]:
        q = cfg.quality
        if not q.enabled:
            return ("off", "")
        return ("enabled", f"min_english_prob {q.min_english_prob}, min_words {q.min_words}, max_words {q.max_words}, "
                           f"drop_truncated {q.drop_truncated}, require_answer {q.require_answer}")
